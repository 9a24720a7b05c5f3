"""Nothing at the repository root shadows an installed distribution's import name.

`python -m ...` and `python -c ...` put the working directory first on `sys.path`. transformers >= 5.25 imports
the `kernels` distribution (Hugging Face's kernel hub); a regular package `kernels/` at the repository root would be
imported in its place. The top-level `kernels/`, `configs/` and `tools/` folders therefore carry no `__init__.py`:
they install as `planx_jax.kernels`, ... (setup.py), and from the root they are at most namespace portions, which
Python ranks below any regular package on the path.

These tests run real subprocesses the way users run things, from the repository root and from another directory.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TOP_LEVEL_FOLDERS = ("kernels", "configs", "tools")

# Prints where each top-level name and planx_jax.kernels resolve, after importing what a user imports.
_PROBE = r"""
import importlib.metadata, importlib.util, json, sys
import transformers
from diffusers import WanTransformer3DModel
import planx_jax.kernels
from planx_jax.kernels import attention
out = {"planx_jax.kernels": list(planx_jax.kernels.__path__), "attention": attention.__file__}
for name in sys.argv[1:]:
  spec = importlib.util.find_spec(name)
  try:
    installed = importlib.metadata.distribution(name) is not None
  except importlib.metadata.PackageNotFoundError:
    installed = False
  out[name] = {"installed": installed, "origin": spec.origin if spec else None,
               "locations": list(spec.submodule_search_locations or []) if spec else []}
print(json.dumps(out))
"""


def _probe(cwd: Path) -> dict:
  proc = subprocess.run([sys.executable, "-c", _PROBE, *TOP_LEVEL_FOLDERS], cwd=cwd, capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


def _inside_repo(path) -> bool:
  """In the repository's own files (a virtual environment inside the checkout, as CI makes, does not count)."""
  if path is None:
    return False
  path = Path(path).resolve()
  return path.is_relative_to(ROOT) and not path.is_relative_to(Path(sys.prefix).resolve())


@pytest.mark.parametrize("where", ["root", "elsewhere"])
def test_imports_resolve_to_installed_distributions(where, tmp_path):
  out = _probe(ROOT if where == "root" else tmp_path)
  assert Path(out["attention"]).resolve() == ROOT / "kernels" / "attention" / "__init__.py"
  for name in TOP_LEVEL_FOLDERS:
    found = out[name]
    # A regular package (an __init__.py) in the repository would win over site-packages from the root.
    assert not _inside_repo(found["origin"]), f"import {name} resolves to the repository: {found}"
    if found["installed"]:
      assert not any(_inside_repo(p) for p in found["locations"]), f"import {name} resolves to the repository: {found}"


def test_no_top_level_folder_is_a_regular_package():
  for name in TOP_LEVEL_FOLDERS:
    assert not (ROOT / name / "__init__.py").exists(), f"{name}/__init__.py would shadow the '{name}' distribution"


def test_module_entry_points_run_from_the_root():
  proc = subprocess.run([sys.executable, "-m", "planx_jax.tools.bench_dit", "--help"], cwd=ROOT,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "usage" in proc.stdout.lower()


def test_config_files_are_found_by_name_from_another_directory(tmp_path):
  """`--config configs/<name>.py` names the packaged config when no such file is under the working directory,
  whether or not anything imported `planx_jax.configs` before (a source checkout adds its configs/ on import)."""
  probe = "from planx_jax.train.config_files import load_config; print(load_config('configs/demo.py').steps.dit_sft)"
  proc = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert proc.stdout.split() == ["300"]
