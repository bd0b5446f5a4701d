"""How a value read from a file appears in an error message: short, and never an error."""

from typing import Any

__all__ = ["short_text"]


def short_text(value: Any, limit: int = 80) -> str:
    """A value read from a file, for a message: at most ``limit`` characters, never an error.

    ``str()`` of an integer of more than 4,300 digits raises, so such numbers are named by
    their size, also inside lists and tuples; strings are shown as they are.
    """
    if isinstance(value, str):
        return value[:limit]
    if isinstance(value, (list, tuple)):
        parts = [short_text(v, limit) for v in value[:8]]
        inner = ", ".join(parts) + (", ..." if len(value) > 8 else "")
        return ("[" + inner + "]" if isinstance(value, list) else "(" + inner + ")")[:limit]
    if type(value) is int and not -(10**30) < value < 10**30:
        return f"<a {value.bit_length()}-bit integer>"
    try:
        return repr(value)[:limit]
    except ValueError:
        return f"<a {type(value).__name__}>"
