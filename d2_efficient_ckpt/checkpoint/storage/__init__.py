"""Local file access: mapping, checked reads, page cache.

Nothing here knows a checkpoint format; it imports only ``..errors``.
"""
