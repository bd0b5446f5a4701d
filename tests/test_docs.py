"""The Markdown files name only repository paths that exist, and the README stays short.

Which files: every ``*.md`` file of the repository that git tracks or would track (``git
ls-files --cached --others --exclude-standard``); without git (e.g. a copy without
``.git``), every ``*.md`` file found by walking the repository, minus what ``.gitignore``
ignores.

What counts as a repository path, and how it is checked:

* **Markdown links and images**, ``[text](target)`` and ``![alt](target)``, outside code.
  Targets with a URL scheme (``https:``, ``mailto:``, ...) are skipped. The rest is
  resolved against the folder of the Markdown file (against the repository root when it
  starts with ``/``) and must exist. An anchor (``#part``) after a link to a Markdown file,
  or a bare anchor, must be the GitHub anchor of one of its headings.
* **Code**, inline (```` `...` ````) and fenced blocks: every token whose first component
  is a top-level folder of the repository that holds tracked files (``tools/``,
  ``configs/``, ``docs/``, ``d2_efficient_ckpt/``, ``tests/``, ...), read from the
  repository root. A token stops at white space, quotes, brackets, ``,;:=|<>`` and
  backticks (a ``,`` inside ``{}`` does not); a trailing ``.`` is dropped. So
  ``$PWD/docs``, ``/opt/...`` and ``../tools`` are not repository paths. ``{a,b}`` is
  expanded and every expansion checked; a token with ``*``, ``?`` or ``[`` must match at
  least one file.
* **Python files named relative to a folder** (``save/write.py``, ``toy/shapes.py``): a
  token of code, as above, that starts with a name (not ``.``, ``/`` or ``$``) other than a
  top-level folder and ends in ``.py``. Some file of the repository must have a path that
  ends with ``/`` and it.

Skipped as generated at run time: paths that ``.gitignore`` ignores (``output/``,
``datasets/toy/``, ``benchmarks/results/*.pth``, ...). Folders that hold no tracked file
(``output/``, ``datasets/``) are not top-level folders in the sense above, so their paths
are never checked. Relative paths of other files (``results/save_cpu.json``) are not
checked: name a file from the repository root when the check should cover it.
"""

import fnmatch
import glob
import os
import re
import subprocess
from typing import Dict, Iterator, List, Set, Tuple

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README_MAX_BYTES = 6144

_FENCE = re.compile(r"^([ \t]*)(```+|~~~+)[^\n]*\n(.*?)^\1\2[ \t]*$", re.M | re.S)
_INLINE_CODE = re.compile(r"(`+)(.+?)\1", re.S)
_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
_TOKEN_END = set(" \t\n\"'`()<>,;:=|")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$", re.M)


def _gitignore_patterns() -> List[str]:
    path = os.path.join(REPO, ".gitignore")
    if not os.path.isfile(path):
        return []
    with open(path, encoding="utf-8") as f:
        lines = [line.strip() for line in f]
    return [line for line in lines if line and not line.startswith(("#", "!"))]


_IGNORED = _gitignore_patterns() + [".git"]


def _is_ignored(rel: str) -> bool:
    """Whether ``rel`` (relative to the repository, ``/``-separated) or a folder above it
    is ignored by ``.gitignore`` (its plain patterns: no negation)."""
    parts = rel.strip("/").split("/")
    for pattern in _IGNORED:
        dir_only = pattern.endswith("/")
        pat = pattern.strip("/")
        anchored = "/" in pat
        for i in range(1, len(parts) + 1):
            if dir_only and i == len(parts) and not os.path.isdir(os.path.join(REPO, rel)):
                continue
            candidate = "/".join(parts[:i]) if anchored else parts[i - 1]
            if fnmatch.fnmatchcase(candidate, pat):
                return True
    return False


def _repo_files() -> List[str]:
    """Files git tracks or would track, relative to the repository root."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
            cwd=REPO,
            capture_output=True,
            check=True,
        ).stdout.decode()
        files = [f for f in out.split("\0") if f]
    except (OSError, subprocess.CalledProcessError):
        files = []
    if files:
        return [f for f in files if os.path.exists(os.path.join(REPO, f))]
    found = []
    for root, dirs, names in os.walk(REPO):
        rel_root = os.path.relpath(root, REPO).replace(os.sep, "/")
        rel_root = "" if rel_root == "." else rel_root + "/"
        dirs[:] = [d for d in dirs if not _is_ignored(rel_root + d + "/")]
        found += [rel_root + n for n in names if not _is_ignored(rel_root + n)]
    return found


FILES = _repo_files()
MARKDOWN = sorted(f for f in FILES if f.endswith(".md"))
TOP_FOLDERS = {f.split("/", 1)[0] for f in FILES if "/" in f}


def _without_fences(text: str, code: List[str]) -> str:
    def fence(m: "re.Match[str]") -> str:
        code.append(m.group(3))
        return "\n" * m.group(0).count("\n")

    return _FENCE.sub(fence, text)


def _split_code(text: str) -> Tuple[str, List[str]]:
    """The text without its code, and the code: fenced blocks and inline spans."""
    code: List[str] = []

    def inline(m: "re.Match[str]") -> str:
        code.append(m.group(2))
        return " "

    return _INLINE_CODE.sub(inline, _without_fences(text, code)), code


def _expand_braces(token: str) -> List[str]:
    m = re.search(r"\{([^{}]*,[^{}]*)\}", token)
    if m is None:
        return [token]
    out: List[str] = []
    for choice in m.group(1).split(","):
        out += _expand_braces(token[: m.start()] + choice + token[m.end() :])
    return out


def _tokens(code: str) -> Iterator[str]:
    """Maximal runs of characters that are not token ends (a ``,`` inside ``{}`` is not)."""
    token, depth = "", 0
    for ch in code + " ":
        if ch in _TOKEN_END and not (ch == "," and depth > 0):
            if token:
                yield token
            token, depth = "", 0
            continue
        token += ch
        depth += (ch == "{") - (ch == "}")


def code_paths(code: str) -> Tuple[List[str], List[str]]:
    """Paths named in a piece of code (see the module's docstring): those from the
    repository root, and relative paths of Python files."""
    rooted: List[str] = []
    tails: List[str] = []
    for token in _tokens(code):
        token = token.rstrip(".")
        first = token.split("/", 1)[0]
        if "/" not in token:
            continue
        if first in TOP_FOLDERS:
            rooted += _expand_braces(token)
        elif re.match(r"\w", first) and token.endswith(".py"):
            tails += _expand_braces(token)
    return rooted, tails


def _is_tail(rel: str) -> bool:
    return any(f.endswith("/" + rel) for f in FILES)


def link_targets(prose: str) -> List[str]:
    return [m.group(1) for m in _LINK.finditer(prose)]


def _exists(rel: str) -> bool:
    if _is_ignored(rel):
        return True
    if any(c in rel for c in "*?["):
        return bool(glob.glob(os.path.join(REPO, rel)))
    return os.path.exists(os.path.join(REPO, rel))


def github_anchor(heading: str, seen: Dict[str, int]) -> str:
    """GitHub's anchor for a heading: inline markup dropped, lower case, punctuation other
    than ``-`` and ``_`` removed, spaces as ``-``; repeated anchors get ``-1``, ``-2``, ..."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = text.replace("`", "").replace("*", "")
    slug = re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")
    n = seen.get(slug, 0)
    seen[slug] = n + 1
    return slug if n == 0 else f"{slug}-{n}"


def anchors_of(rel: str) -> Set[str]:
    with open(os.path.join(REPO, rel), encoding="utf-8") as f:
        prose = _without_fences(f.read(), [])
    seen: Dict[str, int] = {}
    return {github_anchor(m.group(2), seen) for m in _HEADING.finditer(prose)}


def broken_paths(rel: str) -> List[str]:
    """Every path named in the Markdown file ``rel`` that does not exist, with why."""
    with open(os.path.join(REPO, rel), encoding="utf-8") as f:
        prose, code = _split_code(f.read())
    broken = []
    for piece in code:
        rooted, tails = code_paths(piece)
        missing = [p for p in rooted if not _exists(p)] + [p for p in tails if not _is_tail(p)]
        broken += [f"`{p}`" for p in missing if f"`{p}`" not in broken]
    folder = os.path.dirname(rel)
    for target in link_targets(prose):
        if _SCHEME.match(target):
            continue
        path, _, anchor = target.partition("#")
        path = path.split("?", 1)[0]
        if path:
            resolved = os.path.normpath(
                path.lstrip("/") if path.startswith("/") else os.path.join(folder, path)
            ).replace(os.sep, "/")
            if resolved.startswith("../") or not _exists(resolved):
                broken.append(f"({target}): {resolved} does not exist")
                continue
        else:
            resolved = rel
        if anchor and resolved.endswith(".md") and anchor not in anchors_of(resolved):
            broken.append(f"({target}): {resolved} has no heading with anchor #{anchor}")
    return broken


def test_markdown_files_are_found():
    assert "README.md" in MARKDOWN
    assert {"tools", "configs", "docs", "d2_efficient_ckpt", "tests"} <= TOP_FOLDERS


@pytest.mark.parametrize("rel", MARKDOWN)
def test_markdown_names_only_existing_paths(rel):
    broken = broken_paths(rel)
    assert not broken, f"{rel} names paths that do not exist:\n  " + "\n  ".join(broken)


def test_readme_is_short():
    size = os.path.getsize(os.path.join(REPO, "README.md"))
    assert size <= README_MAX_BYTES, (
        f"README.md is {size} bytes, more than {README_MAX_BYTES}: move detail into docs/"
    )


def test_the_rules_on_examples():
    assert code_paths("python tools/train_net.py --config-file configs/x.yaml")[0] == [
        "tools/train_net.py",
        "configs/x.yaml",
    ]
    assert code_paths("configs/toy/a{,_voc}.yaml")[0] == [
        "configs/toy/a.yaml",
        "configs/toy/a_voc.yaml",
    ]
    # Not repository paths: absolute, relative to another folder, variables, generated.
    assert code_paths('-v "$PWD/docs:/opt/docs" ../tools/x.py /tools/y.py output/z') == ([], [])
    assert code_paths("--ckpt=benchmarks/results/r50.pth")[0] == ["benchmarks/results/r50.pth"]
    assert code_paths("save/write.py results/a.json") == ([], ["save/write.py"])
    assert _is_tail("save/write.py") and not _is_tail("checkpoint/no_such_module.py")
    assert _exists("benchmarks/results/r50.pth")  # ignored by .gitignore: generated
    assert not _exists("tools/no_such_tool.py")
    assert link_targets("[a](tutorials/install.md#x) ![b](img.png) [c](https://e.org)") == [
        "tutorials/install.md#x",
        "img.png",
        "https://e.org",
    ]
    seen: Dict[str, int] = {}
    assert github_anchor("Loading `.pth` files: a *test*", seen) == "loading-pth-files-a-test"
    assert github_anchor("Loading `.pth` files: a *test*", seen) == "loading-pth-files-a-test-1"
