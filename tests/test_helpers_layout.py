"""Test modules share code through ``tests/helpers/`` only: none imports a conftest or
another test module (pytest finds fixtures in conftest files by itself)."""

import ast
import os

TESTS = os.path.dirname(os.path.abspath(__file__))


def test_no_test_module_imports_a_conftest_or_another_test_module():
    bad = []
    for folder, _, files in os.walk(TESTS):
        for name in files:
            if not name.endswith(".py"):
                continue
            path = os.path.join(folder, name)
            for node in ast.walk(ast.parse(open(path).read())):
                if isinstance(node, ast.ImportFrom):
                    # "from .conftest import x", "from ..test_y import z", "from tests.a import b"
                    names = (node.module or "").split(".") + [a.name for a in node.names]
                    ours = node.level > 0 or names[0] == "tests"
                    if ours and any(n == "conftest" or n.startswith("test_") for n in names):
                        bad.append(f"{os.path.relpath(path, TESTS)}: line {node.lineno}")
    assert not bad, "import from tests/helpers/ instead:\n" + "\n".join(sorted(bad))
