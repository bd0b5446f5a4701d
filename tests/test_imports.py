"""The package's import graph: no cycles, and checkpoint/ sub-packages import only down.

Read from the source with ``ast`` (nothing is imported), so a cycle fails here even where
Python would resolve it lazily.
"""

import ast
import os
from typing import Dict, Set

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PKG = "d2_efficient_ckpt"
# Layers of checkpoint/, lowest first: a module may import its own layer and those below.
LAYERS = ["errors", "storage", "formats", "options", "keys", "report", "explain", "restore",
          "save", "load", "resume", "build", "checkpointer"]  # fmt: skip


def _modules() -> Dict[str, str]:
    out = {}
    root = os.path.join(REPO, PKG)
    for d, _, files in os.walk(root):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(d, f)
                rel = os.path.relpath(path, REPO)[:-3].replace(os.sep, ".")
                out[rel[: -len(".__init__")] if rel.endswith(".__init__") else rel] = path
    return out


def _imports(name: str, path: str, modules: Dict[str, str]) -> Set[str]:
    is_pkg = path.endswith("__init__.py")
    package = name if is_pkg else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            candidates = [target] + [f"{target}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            candidates = [a.name for a in node.names]
        else:
            continue
        found |= {c for c in candidates if c in modules and c != name}
    return found


def _graph() -> Dict[str, Set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def test_no_import_cycles():
    graph = _graph()
    state: Dict[str, int] = {}
    stack = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            # A package imports its own parts (registration); that is not a cycle.
            if nxt.startswith(node + "."):
                continue
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt) :] + [nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def _layer(module: str) -> int:
    rest = module[len(PKG + ".checkpoint.") :].split(".")[0]
    return LAYERS.index(rest)


def test_checkpoint_layers_point_down():
    graph = _graph()
    prefix = PKG + ".checkpoint."
    bad = []
    for name, deps in graph.items():
        if not name.startswith(prefix):
            continue
        for dep in deps:
            if dep.startswith(prefix) and _layer(dep) > _layer(name):
                bad.append(f"{name} imports {dep}")
    assert not bad, "imports that point up:\n" + "\n".join(sorted(bad))


def test_checkpoint_top_level_holds_only_the_listed_files():
    top = os.path.join(REPO, PKG, "checkpoint")
    files = sorted(f for f in os.listdir(top) if f.endswith(".py"))
    assert files == ["__init__.py", "build.py", "checkpointer.py", "errors.py", "options.py"]


# Parts of data/, lowest layer first. A module may import its own part and the layers below
# it, never a layer above nor another part of its own layer: the format plug-ins and the
# checks know nothing of each other or of the registration pipeline.
DATA_LAYERS = [
    ["errors", "parallel", "report"],
    ["image_headers", "options"],
    ["checks", "formats"],
    ["registration"],
]
# Parts of the package that the dataset layer never imports.
NOT_IMPORTED_BY_DATA = ["checkpoint", "cli", "engine", "toy"]


def test_data_rooms_point_down():
    data = PKG + ".data"
    layer = {part: k for k, parts in enumerate(DATA_LAYERS) for part in parts}

    def part(module):  # the part of data/ a module is in; None for data/__init__.py
        return module[len(data) + 1 :].split(".")[0] if module != data else None

    graph = {n: deps for n, deps in _graph().items() if n == data or n.startswith(data + ".")}
    unplaced = sorted({part(n) for n in graph} - set(layer) - {None})
    assert not unplaced, f"parts of data/ in no layer of DATA_LAYERS: {unplaced}"
    bad = []
    for name, deps in graph.items():
        for dep in sorted(deps):
            if dep.split(".")[1:2] and dep.split(".")[1] in NOT_IMPORTED_BY_DATA:
                bad.append(f"{name} imports {dep}")
            elif dep.startswith(data + ".") and part(name) is not None:
                own, other = part(name), part(dep)
                if other != own and layer[other] >= layer[own]:
                    bad.append(f"{name} imports {dep}")
    assert not bad, "imports that point up or across data/:\n" + "\n".join(sorted(bad))
