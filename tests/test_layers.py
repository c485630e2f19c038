"""The house: each layer imports only the layers below it (read off the import graph, without importing).

    commands      main, evaluate, restore, gir_report, sweep, fusion_report, bench, ... (`python -m` entry points)
    cli           what every command shares
    trainer       train, throughput
    tasks         what is trained: network + loss + its evaluator
    evaluation    losses    convert      (side by side: none imports another)
    reporting     metric writers, summaries, image files (PNGs through data.images)
    models        diffusion    data      (side by side)
    base          sharding, checkpoint, optim, flat_update, distributed, allocator, compile_options

Inside one package (and among the base modules) modules import each other freely; a command imports no
other command. A function-level import of a restorejax module is
allowed only where it keeps TensorFlow or torch out of start-up: its target imports one of them at the top.
"""

import ast
import os
import re

import pytest

from conftest import ROOT

PACKAGE = os.path.join(ROOT, "restorejax")
HEAVY = ("torch", "tensorflow", "tensorflow_datasets", "clu")

# Rank of each layer; modules not named here take their package's rank (restorejax.<package>.*).
RANKS = {"base": 0, "models": 1, "diffusion": 1, "data": 1, "bench_torch": 1, "reporting": 1.5,
         "evaluation": 2, "losses": 2, "convert": 2, "tasks": 3, "train": 4, "throughput": 4, "cli": 5,
         "commands": 6}
BASE = ("sharding", "checkpoint", "optim", "flat_update", "distributed", "allocator", "compile_options")
COMMANDS = ("main", "evaluate", "restore", "sweep", "bench", "bench_gpu", "cascade", "sr3_compare", "pod_check", "gir_report",
            "make_priors", "fusion_report", "convert.__main__")


def _modules():
  for folder, _, files in os.walk(PACKAGE):
    for f in files:
      if f.endswith(".py"):
        path = os.path.join(folder, f)
        name = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
        yield (name[:-len(".__init__")] if name.endswith(".__init__") else name), path


MODULES = dict(_modules())


def layer(module: str) -> tuple[int, str]:
  """(rank, group) of restorejax.X...; the group is what 'the same package' means."""
  rest = module.split(".", 1)[1] if "." in module else ""
  if rest in COMMANDS:
    return RANKS["commands"], module
  head = rest.split(".")[0]
  if head in BASE or not head:
    return RANKS["base"], "base"
  return RANKS[head], "trainer" if RANKS[head] == RANKS["train"] else head


def _imports(path: str):
  """(target module, function-level?) for every restorejax import in a file."""
  tree = ast.parse(open(path).read(), path)
  nested = set()
  for node in ast.walk(tree):
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
      nested |= {id(n) for n in ast.walk(node) if isinstance(n, (ast.Import, ast.ImportFrom))}
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in MODULES else node.module
               for a in node.names]
    else:
      continue
    for name in names:
      if name.split(".")[0] == "restorejax":
        while name not in MODULES and "." in name:
          name = name.rsplit(".", 1)[0]
        yield name, id(node) in nested, node.lineno


def _heavy(module: str) -> bool:
  tree = ast.parse(open(MODULES[module]).read())
  for node in tree.body:
    if isinstance(node, ast.Import) and any(a.name.split(".")[0] in HEAVY for a in node.names):
      return True
    if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in HEAVY:
      return True
  return False


def test_every_module_has_a_layer():
  for module in MODULES:
    assert layer(module)  # KeyError names a new package that needs a rank


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_go_down_only(module):
  rank, group = layer(module)
  upward = []
  for target, _, line in _imports(MODULES[module]):
    t_rank, t_group = layer(target)
    if t_group != group and t_rank >= rank and target != "restorejax":
      upward.append(f"{module}:{line} imports {target} (layer {t_rank} >= {rank})")
  assert not upward, "\n".join(upward)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_function_level_imports_only_keep_heavy_dependencies_out(module):
  bad = [f"{module}:{line} imports {target} inside a function"
         for target, nested, line in _imports(MODULES[module]) if nested and not _heavy(target)]
  assert not bad, "\n".join(bad)


def test_the_readme_traces_a_run_through_five_existing_files():
  """README, Design: config -> trainer -> task -> model -> loss, each a file that exists, and each stop's
  module names the next one (the path a newcomer follows)."""
  text = open(os.path.join(ROOT, "README.md")).read()
  block = text[text.index("A run, traced through"):text.index("inside train.py:")]
  files = re.findall(r"^\s+(?:-> )?((?:configs|restorejax)/[\w/]+\.py)\b", block, flags=re.M)
  assert len(files) == 5, files
  for path in files:
    assert os.path.isfile(os.path.join(ROOT, path)), path
  calls = {"restorejax/train.py": "tasks.build(", "restorejax/tasks/restoration.py": "models.build("}
  for path, call in calls.items():
    assert call in open(os.path.join(ROOT, path)).read(), (path, call)
  assert "losses.build(" in open(os.path.join(ROOT, "restorejax/tasks/restoration.py")).read()
  assert "checkpoint.save(" in open(os.path.join(ROOT, "restorejax/train.py")).read()
