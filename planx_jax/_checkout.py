"""Where the repository's top-level `kernels/`, `configs/` and `tools/` folders join the `planx_jax` namespace.

Those folders carry no `__init__.py`: a regular package there would shadow the installed distributions of the same
name whenever the repository root is first on `sys.path` (`python -m ...`, `python -c ...`); transformers >= 5.25
imports the `kernels` distribution. Their package `__init__` files therefore live here, in `planx_jax/<name>/`:
a wheel gets the folders' modules copied in by setup.py; a source checkout (an editable install, or the root on
`PYTHONPATH`) finds them through `checkout_path`.
"""

from pathlib import Path

_ROOT = Path(__file__).resolve().parent.parent


def checkout_path(package_path: list[str], folder: str) -> list[str]:
  """`package_path` plus the checkout's top-level `folder` when this is a source checkout (setup.py beside the
  `planx_jax` package); an installed wheel holds the modules inside the package already and gets nothing added."""
  source = _ROOT / folder
  if (_ROOT / "setup.py").is_file() and (_ROOT / "planx_jax").is_dir() and source.is_dir():
    if str(source) not in package_path:
      package_path.append(str(source))
  return package_path
