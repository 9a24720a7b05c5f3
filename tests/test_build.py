"""The Bazel BUILD file covers every module and test, names only files that exist, and stays consistent.

BUILD is Starlark, a Python subset: it is evaluated here with stand-ins for the Bazel rules that record
each target, so the check needs no Bazel installation.
"""

import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE_FOLDERS = ("planx_jax", "kernels", "configs", "tools")


def load_build():
  targets = {}

  def rule(kind):
    def record(**kwargs):
      targets[kwargs["name"]] = {"kind": kind, **kwargs}

    return record

  names = {kind: rule(kind) for kind in ("py_library", "py_test", "py_binary", "genrule")}
  names["package"] = lambda **kwargs: None
  exec(compile((ROOT / "BUILD").read_text(), "BUILD", "exec"), names)  # noqa: S102 - our own BUILD file
  return targets


@pytest.fixture(scope="module")
def targets():
  return load_build()


def _python_files(folder: str) -> set[str]:
  out = set()
  for dirpath, dirnames, filenames in os.walk(ROOT / folder):
    dirnames[:] = [d for d in dirnames if d != "__pycache__"]
    for name in filenames:
      if name.endswith(".py"):
        out.add(str((Path(dirpath) / name).relative_to(ROOT)))
  return out


def _sources(targets) -> set[str]:
  """Files named by py rules directly or through the namespace genrules."""
  files = set()
  for target in targets.values():
    for src in target.get("srcs", []):
      if src.startswith(":"):
        files.update(targets[src[1:]]["srcs"])
      else:
        files.add(src)
  return files


def test_every_module_and_test_is_covered(targets):
  covered = _sources(targets)
  on_disk = set().union(*(_python_files(f) for f in (*PACKAGE_FOLDERS, "tests")))
  assert sorted(on_disk - covered) == [], "add these files to BUILD"


def test_every_named_file_exists(targets):
  for target in targets.values():
    for src in [*target.get("srcs", []), *target.get("data", [])]:
      if not src.startswith(":"):
        assert (ROOT / src).is_file(), f"{target['name']} names missing file {src}"


def test_each_test_file_has_its_own_target(targets):
  tests = {t["name"]: t for t in targets.values() if t["kind"] == "py_test"}
  files = sorted(p.stem for p in (ROOT / "tests").glob("test_*.py"))
  assert sorted(tests) == files
  for name, target in tests.items():
    assert f"tests/{name}.py" in target["srcs"] and target["main"] == "tests/pytest_main.py"


def test_deps_and_namespace_copies_resolve(targets):
  for target in targets.values():
    for dep in target.get("deps", []):
      assert dep.startswith(":") and dep[1:] in targets, f"{target['name']} depends on unknown {dep}"
  for folder in ("kernels", "configs", "tools"):
    rule = targets[f"{folder}_in_namespace"]
    assert rule["outs"] == [f"planx_jax/{src}" for src in rule["srcs"]]
    assert all(src.startswith(f"{folder}/") for src in rule["srcs"])


def test_setup_maps_the_same_namespace():
  setup = (ROOT / "setup.py").read_text()
  for folder in ("kernels", "configs", "tools"):
    assert re.search(rf'"{folder}": "planx_jax\.{folder}"', setup)


def test_ci_runs_the_readme_test_command():
  readme = (ROOT / "README.md").read_text()
  ci = (ROOT / ".ci" / "run").read_text()
  commands = re.findall(r"```(?:bash|sh)\n(.*?)```", readme, re.S)
  test_commands = [c.strip() for c in commands if "pytest" in c]
  assert len(test_commands) == 1, "README has exactly one test set-up command"
  assert test_commands[0] in ci


def test_setup_commands_install_against_the_constraints():
  readme = (ROOT / "README.md").read_text()
  commands = [c.strip() for c in re.findall(r"```(?:bash|sh)\n(.*?)```", readme, re.S) if "python3 -m venv .venv" in c]
  assert len(commands) == 2, "README has exactly two set-up commands"
  assert all("pip install -c constraints.txt -e " in c for c in commands)
  pins = [line for line in (ROOT / "constraints.txt").read_text().splitlines() if line and not line.startswith("#")]
  assert all(re.fullmatch(r"[A-Za-z0-9_.\-\[\]]+==\S+", line) for line in pins), "constraints.txt holds exact pins"
  names = {line.split("==")[0].lower() for line in pins}
  assert {"jax", "jaxlib", "flax", "transformers", "diffusers", "torch", "libtpu", "tokenizers"} <= names
  assert not any(name.startswith("planx") for name in names)
