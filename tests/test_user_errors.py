"""One base class, ``UserError``, for every error the package raises for bad input.

Every exception class the package defines is either a ``UserError`` (the tools print it as
one line and exit 2) or one of the internal signals listed here, each caught inside the
package and turned into a user error with the file and the fix.
"""

import importlib
import inspect
import pkgutil

import d2_efficient_ckpt
from d2_efficient_ckpt.errors import USER_ERRORS, UserError

# Raised and caught inside the package, never seen by a user as they are.
INTERNAL = {
    "NotRegularFileError",  # an OSError of the small-file reader; callers explain it
    "PickleError",  # the unpickler's signals, turned into CheckpointFormatError or
    "MalformedPickle",  # UnsafeCheckpointError with the file's name
    "UnsafeGlobal",
    "TreeError",  # limits of the safe reader's trees, turned into CheckpointFormatError
    "SkeletonError",  # a training file's JSON skeleton, turned into CheckpointFormatError
}


def _exception_classes():
    for info in pkgutil.walk_packages(d2_efficient_ckpt.__path__, "d2_efficient_ckpt."):
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if (
                inspect.isclass(obj)
                and issubclass(obj, BaseException)
                and obj.__module__ == module.__name__
            ):
                yield name, obj


def test_every_error_of_the_package_is_a_user_error_or_internal():
    found = dict(_exception_classes())
    assert len(found) > 10
    strays = sorted(
        n for n, c in found.items() if not issubclass(c, UserError) and n not in INTERNAL
    )
    assert not strays, f"neither a UserError nor internal: {sorted(strays)}"
    assert USER_ERRORS == (UserError,)
