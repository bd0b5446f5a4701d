"""Storage: where checkpoint files live, behind one small interface (``base.Store``).

``registry.store_for(path)`` gives the store of a path. ``local`` is the POSIX store, with its
atomic writes (``atomic``), the clean-up of interrupted ones (``stale``), the file mapping
and checked reads (``mapped``) and the page cache (``page_cache``). Nothing here knows a
checkpoint format; it imports only ``..errors``.
"""
