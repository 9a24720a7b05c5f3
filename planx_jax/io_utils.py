"""Filesystem helpers shared by checkpoint writers, converters and dataset builders.

`atomic_directory`: write a directory in a temp dir, rename it into place on success.
"""

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
  """Yields a temp dir next to `path`; on success it replaces `path`, on failure it is removed."""
  path = Path(path)
  if path.exists() and (path.is_file() or any(path.iterdir())) and not overwrite:
    raise FileExistsError(f"{path} exists and is not empty (pass overwrite=True to replace it)")
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
  try:
    yield tmp
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  if path.exists():
    backup = path.with_name(f".{path.name}.old-{os.getpid()}")
    path.rename(backup)
    tmp.rename(path)
    shutil.rmtree(backup, ignore_errors=True) if backup.is_dir() else backup.unlink()
  else:
    tmp.rename(path)
