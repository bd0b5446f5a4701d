"""INCLUDE, EXCLUDE and RENAME over key names.

RENAME rules map checkpoint keys to model keys first; then INCLUDE/EXCLUDE globs decide
which model keys are loaded.
"""

import fnmatch
import re
from typing import List, Optional, Sequence, Tuple

__all__ = ["KeySelector"]


class KeySelector:
    """Applies RENAME, INCLUDE and EXCLUDE to key names, recording what each did."""

    def __init__(
        self,
        include: Sequence[str] = (),
        exclude: Sequence[str] = (),
        rename: Sequence[Tuple[str, str]] = (),
    ):
        self.include = tuple(include)
        self.exclude = tuple(exclude)
        self.rename = tuple((re.compile(p), r, p) for p, r in rename)

    def renamed(self, key: str) -> Tuple[str, List[str]]:
        """The key after all RENAME rules, and the patterns of the rules that changed it."""
        rules = []
        for rx, repl, pattern in self.rename:
            new = rx.sub(repl, key)
            if new != key:
                rules.append(pattern)
                key = new
        return key, rules

    def why_skipped(self, key: str) -> Optional[str]:
        """``"exclude"``, ``"include"`` (not matched by INCLUDE) or ``None`` if selected."""
        if self.include and not any(fnmatch.fnmatchcase(key, p) for p in self.include):
            return "include"
        if any(fnmatch.fnmatchcase(key, p) for p in self.exclude):
            return "exclude"
        return None
