"""The library's layering, read from the source: every `import` and `from ... import` statement of planx_jax/,
kernels/, configs/ and tools/ (module level and inside functions alike) as an edge between planx_jax modules.

Function-local imports count: an import moved into a function body still runs, and still ties the two modules
together (it was how the train <-> rl circle was hidden). Importing `a.b.c` is an edge to `a.b.c` only, not to
the packages `a` and `a.b` whose `__init__` Python also runs (package inits re-export their own modules).
`kernels/`, `configs/` and `tools/` join the `planx_jax` namespace, so their modules are `planx_jax.kernels.*`, ....
Each failure lists the offending edges as `importer -> imported (file:line)`.
"""

import ast
import functools
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = {"planx_jax": "planx_jax", "kernels": "planx_jax.kernels", "configs": "planx_jax.configs",
           "tools": "planx_jax.tools"}
# The layers below training: pure model, loss, sampling, data, conversion, sharding and kernel code.
FOUNDATION = ("models", "losses", "sampling", "data", "convert", "parallel", "kernels")
# What stands on them: the trainer, RL, the synthetic world, the demo and the command line.
APPLICATIONS = ("train", "rl", "world", "demo", "commands")


def module_name(path: Path) -> tuple[str, bool]:
  """A source file -> (its dotted module name, whether it is a package `__init__`)."""
  rel = path.relative_to(ROOT)
  parts = [FOLDERS[rel.parts[0]], *rel.parts[1:-1]]
  if rel.name != "__init__.py":
    parts.append(rel.stem)
  return ".".join(parts), rel.name == "__init__.py"


def imported_names(source: str, module: str, is_package: bool) -> list[tuple[str, int]]:
  """(dotted name, line) of every import in `source`, anywhere in the file; `from a import b` gives `a.b` (the
  caller keeps the longest known module prefix), relative imports are resolved against `module`."""
  package = module if is_package else module.rpartition(".")[0]
  names = []
  for node in ast.walk(ast.parse(source)):
    if isinstance(node, ast.Import):
      names.extend((alias.name, node.lineno) for alias in node.names)
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
        base = ".".join(anchor + ([base] if base else []))
      names.extend((f"{base}.{alias.name}" if alias.name != "*" else base, node.lineno) for alias in node.names)
  return names


@functools.cache
def import_graph() -> dict[str, dict[str, str]]:
  """{importer: {imported: "file:line"}} over the planx_jax modules of the four folders."""
  files = {}
  for folder in FOLDERS:
    for path in sorted((ROOT / folder).rglob("*.py")):
      files[module_name(path)] = path
  known = {name for name, _ in files}
  graph = {}
  for (module, is_package), path in files.items():
    edges = graph.setdefault(module, {})
    for name, line in imported_names(path.read_text(), module, is_package):
      parts = name.split(".")
      target = next((".".join(parts[:i]) for i in range(len(parts), 0, -1) if ".".join(parts[:i]) in known), None)
      if target is not None and target != module:
        edges.setdefault(target, f"{path.relative_to(ROOT)}:{line}")
  return graph


def folder_of(module: str) -> str:
  """planx_jax.<folder>.x -> <folder>; a top-level module (planx_jax.dit, ...) is its own folder."""
  parts = module.split(".")
  return parts[1] if len(parts) > 1 else ""


def edges_between(importers, imported) -> list[str]:
  return sorted(f"{a} -> {b} ({where})" for a, targets in import_graph().items() for b, where in targets.items()
                if folder_of(a) in importers and folder_of(b) in imported)


def cycles(graph: dict[str, dict[str, str]]) -> list[list[str]]:
  """The strongly connected components with more than one module (Tarjan), each sorted."""
  index, low, stack, on_stack, found = {}, {}, [], set(), []

  def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in graph.get(v, {}):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        component.append(w)
        if w == v:
          break
      if len(component) > 1:
        found.append(sorted(component))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return found


def test_the_scan_reads_every_import_form():
  source = ("import planx_jax.data.world\nfrom planx_jax.world import scenes as s\nfrom . import sibling\n"
            "def f():\n  from ..train import loop\n")
  names = [n for n, _ in imported_names(source, "planx_jax.rl.experiment", False)]
  assert names == ["planx_jax.data.world", "planx_jax.world.scenes", "planx_jax.rl.sibling",
                   "planx_jax.train.loop"]
  graph = import_graph()
  assert {"planx_jax.world.scenes", "planx_jax.kernels.attention.dispatch", "planx_jax.configs.demo",
          "planx_jax.tools.rl_report"} <= set(graph)


def test_no_import_cycles():
  graph = import_graph()
  found = cycles(graph)
  report = ["cycle " + " <-> ".join(c) + ":\n  " + "\n  ".join(
      f"{a} -> {b} ({graph[a][b]})" for a in c for b in c if b in graph[a]) for c in found]
  assert not found, "import cycles between modules:\n" + "\n".join(report)


def test_foundation_never_imports_what_stands_on_it():
  bad = edges_between(FOUNDATION, APPLICATIONS)
  assert not bad, f"{'/'.join(FOUNDATION)} must not import {'/'.join(APPLICATIONS)}:\n" + "\n".join(bad)


def test_nothing_in_the_library_imports_configs():
  """Configs are leaves, loaded by path (`--config configs/x.py:arg`); they may import the library and each other."""
  bad = edges_between({folder_of(m) for m in import_graph()} - {"configs"}, {"configs"})
  assert not bad, "planx_jax imports planx_jax.configs:\n" + "\n".join(bad)


def test_train_never_imports_rl():
  bad = edges_between({"train"}, {"rl"})
  assert not bad, "train/ imports rl/ (the experiment takes its batch source as a strategy):\n" + "\n".join(bad)


def test_rl_never_imports_demo():
  bad = edges_between({"rl"}, {"demo"})
  assert not bad, "rl/ imports demo/ (the world is in world/):\n" + "\n".join(bad)


def test_the_world_stands_below_the_trainer_rl_demo_and_commands():
  bad = edges_between({"world"}, {"train", "rl", "demo", "commands"})
  assert not bad, "world/ imports what stands on it:\n" + "\n".join(bad)
