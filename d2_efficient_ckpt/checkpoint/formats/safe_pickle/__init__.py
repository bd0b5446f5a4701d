"""The safe unpickler: a data-only pickle machine, its allowlist, and limits on its result.

Every pickle this package reads without ``weights_only=False`` runs here, whichever file
format holds it (torch zip, torch legacy, zoo ``.pkl``). Modules:
    unpickler    the opcode machine; its errors, and the project's error for them
    allowlist    the globals a pickle may name, as constructors with checked arguments
    tree_limits  the check of a result: no cycles, bounded depth and number of paths
"""

from .unpickler import MAX_DEPTH, MalformedPickle, PickleError, UnsafeGlobal, pickle_error, unpickle

__all__ = [
    "MAX_DEPTH",
    "MalformedPickle",
    "PickleError",
    "UnsafeGlobal",
    "pickle_error",
    "unpickle",
]
