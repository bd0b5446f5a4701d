"""The format registry: the one home of checkpoint suffixes and of the periodic name.

``test_no_suffix_literal_outside_the_formats`` reads every module of the package outside
``checkpoint/formats/`` with ``ast`` and fails on a string constant that spells a file rule
the registry owns. The rule, for each string constant of code:

* exempt: docstrings, and text for people given to argparse (every string inside an
  ``add_parser``/``add_argument``/``ArgumentParser`` call, and module constants such as
  ``EXAMPLES`` passed to one);
* exempt: prose, i.e. a constant with a space in it. Messages may name file types to users
  (``"convert it once to a pickle-free .safetensors file"``), and ``errors.py``, below the
  formats, cannot ask the registry;
* a failure: any other constant equal to a suffix (``".pth"``; a tuple of them is a tuple of
  such constants), holding a suffix (``"model_final.pth"``, ``r"\\.(?:pth)$"``), naming
  suffixes in an alternation (``"pth|safetensors"``), or spelling the periodic name's seven
  digits (the ``07d`` of ``f"model_{it:07d}"``, ``\\d{7}``).
"""

import ast
import os
import re
from typing import Iterator, List, Set, Tuple

import pytest

from d2_efficient_ckpt.checkpoint.formats import pycls, safetensors, torch_file, zoo_pickle
from d2_efficient_ckpt.checkpoint.formats.registry import (
    CHECKPOINT_SUFFIXES,
    SAVE_FORMATS,
    checkpoint_format,
    is_checkpoint_name,
    iteration_from_name,
    model_writer_for,
    output_format,
    parse_periodic,
    periodic_name,
    suffix_for,
    writer_for,
)
from d2_efficient_ckpt.checkpoint.formats.training_safetensors import write_training_safetensors

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
PKG = os.path.join(REPO, "d2_efficient_ckpt")
FORMATS = os.path.join(PKG, "checkpoint", "formats")

# The suffixes the issue names, and every suffix a format module declares.
SUFFIXES = {".pth", ".pt", ".safetensors", ".pkl"} | {
    *torch_file.SUFFIXES,
    safetensors.SUFFIX,
    zoo_pickle.SUFFIX,
    pycls.SUFFIX,
}
_WORDS = {s[1:] for s in SUFFIXES}
_HOLDS_SUFFIX = re.compile(r"\\?\.(?:%s)(?![A-Za-z0-9_])" % "|".join(sorted(_WORDS)))
_PERIODIC = re.compile(r"^0?7d$|:07d|\\d\{7\}")
_ARGPARSE_CALLS = {"add_parser", "add_argument", "add_argument_group", "ArgumentParser"}


def _call_name(node: ast.Call) -> str:
    func = node.func
    return func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")


def _exempt_nodes(tree: ast.Module) -> Set[int]:
    """ids of the string constants that are docstrings or argparse text."""
    exempt: Set[int] = set()
    passed: Set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                exempt.add(id(body[0].value))
        if isinstance(node, ast.Call) and _call_name(node) in _ARGPARSE_CALLS:
            for arg in list(node.args) + [k.value for k in node.keywords]:
                for inner in ast.walk(arg):
                    exempt.add(id(inner))
                    if isinstance(inner, ast.Name):
                        passed.add(inner.id)
    for stmt in tree.body:  # module constants handed to argparse (EXAMPLES)
        if isinstance(stmt, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id in passed for t in stmt.targets
        ):
            exempt |= {id(n) for n in ast.walk(stmt.value)}
    return exempt


def spells_a_file_rule(text: str) -> bool:
    """Whether a string constant of code spells a suffix or the periodic name (see above)."""
    if any(c.isspace() for c in text):
        return False
    if text in SUFFIXES or _HOLDS_SUFFIX.search(text) or _PERIODIC.search(text):
        return True
    return "|" in text and any(w in _WORDS for w in re.split(r"[^A-Za-z0-9_]+", text))


def _violations(path: str) -> Iterator[Tuple[int, str]]:
    tree = ast.parse(open(path).read(), path)
    exempt = _exempt_nodes(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            if id(node) not in exempt and spells_a_file_rule(node.value):
                yield node.lineno, node.value


def _modules_outside_formats() -> List[str]:
    out = []
    for d, _, files in os.walk(PKG):
        if d == FORMATS or d.startswith(FORMATS + os.sep):
            continue
        out += [os.path.join(d, f) for f in files if f.endswith(".py")]
    return sorted(out)


@pytest.mark.parametrize(
    "text",
    [".pth", ".safetensors", ".pkl", ".pt", "model_final.pth", r"^(.+)_(\d{7})\.(?:pth|sa)$",
     "pth|safetensors", "(pth|safetensors)", "07d", "{:07d}"],
)  # fmt: skip
def test_the_rule_catches_suffixes_and_the_periodic_name(text):
    assert spells_a_file_rule(text)


@pytest.mark.parametrize(
    "text",
    ["pth", "safetensors", "torch", "pkl-caffe2", ".integrity.json", "d2_efficient_ckpt.entries",
     "name it .pth or .safetensors.", "model_", "07", "%(name)s"],
)  # fmt: skip
def test_the_rule_lets_names_and_prose_pass(text):
    assert not spells_a_file_rule(text)


def test_the_rule_sees_tuples_f_strings_and_skips_docstrings_and_help(tmp_path):
    src = tmp_path / "m.py"
    src.write_text(
        '"""Docstring: model_0000009.pth."""\n'
        "EXAMPLES = 'python -m x convert a.pth b.safetensors'\n"
        "OTHER = 'b.safetensors'\n"
        "def f(p, it):\n"
        '    """Also a docstring: .pth."""\n'
        "    p.add_argument('out', help='out.pth')\n"
        "    p.add_parser('x', epilog=EXAMPLES)\n"
        "    return p.endswith(('.pth', '.pt')), f'model_{it:07d}'\n"
    )
    assert sorted(_violations(str(src))) == [(3, "b.safetensors"), (8, ".pt"), (8, ".pth"),
                                             (8, "07d")]  # fmt: skip


def test_no_suffix_literal_outside_the_formats():
    bad = [
        f"{os.path.relpath(path, REPO)}:{line}: {text!r}"
        for path in _modules_outside_formats()
        for line, text in _violations(path)
    ]
    assert not bad, "file rules spelled outside checkpoint/formats (ask its registry):\n" + (
        "\n".join(bad)
    )


def test_suffixes_of_written_formats():
    assert SAVE_FORMATS[0] == "pth"
    assert [suffix_for(f) for f in SAVE_FORMATS] == list(CHECKPOINT_SUFFIXES)
    assert suffix_for("torch") == suffix_for("pth")
    with pytest.raises(ValueError):
        suffix_for("pkl")


def test_checkpoint_names():
    assert checkpoint_format("model_final" + suffix_for("pth")) == "pth"
    assert checkpoint_format("m" + suffix_for("safetensors")) == "safetensors"
    assert all(is_checkpoint_name("x" + s) for s in CHECKPOINT_SUFFIXES)
    for name in ["model" + zoo_pickle.SUFFIX, "model", "m.pt", "x.integrity.json"]:
        assert not is_checkpoint_name(name) and checkpoint_format(name) is None


def test_periodic_name_and_its_parser_agree():
    for fmt in SAVE_FORMATS:
        for it in (0, 9, 1234567):
            for how in (fmt, suffix_for(fmt)):
                name = periodic_name("model", it, how)
                assert name.endswith(suffix_for(fmt)) and parse_periodic(name) == ("model", it)
    assert periodic_name("model", 99) == "model_0000099"
    assert periodic_name("my_run", 5, "pth") == "my_run_0000005" + suffix_for("pth")
    assert parse_periodic(periodic_name("my_run", 5, "pth")) == ("my_run", 5)


@pytest.mark.parametrize(
    "stem", ["model_99", "model_0000099", "model_00000099", "_0000099", "model_final"]
)
def test_parse_periodic_takes_only_periodic_names(stem):
    name = stem if stem == "model_0000099" else stem + suffix_for("pth")
    assert parse_periodic(name) is None


def test_iteration_from_name_takes_any_trailing_number():
    assert iteration_from_name(periodic_name("model", 99, "pth")) == 99
    assert iteration_from_name("model_99" + suffix_for("safetensors")) == 99
    assert iteration_from_name("model_0000099") == 99
    assert iteration_from_name("model_final" + suffix_for("pth")) == -1


def test_output_format_by_name():
    assert output_format("w" + suffix_for("safetensors")) == "safetensors"
    assert {output_format("w" + s) for s in torch_file.SUFFIXES} == {"torch"}
    assert output_format("w" + zoo_pickle.SUFFIX) is None and output_format("w") is None


def test_writers_by_format_name():
    assert writer_for("safetensors") is write_training_safetensors
    assert writer_for("pth") is writer_for("torch") is torch_file.write_checkpoint_file
    assert model_writer_for("safetensors") is safetensors.write_model
    assert model_writer_for("torch") is torch_file.write_model
