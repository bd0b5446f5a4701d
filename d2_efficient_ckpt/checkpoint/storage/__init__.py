"""Storage: where checkpoint files live, behind one small interface (``base.Store``).

``registry.store_for(path)`` gives the store of a path. ``local`` is the POSIX store, with its
atomic writes (``atomic``), the clean-up of interrupted ones (``stale``), the file mapping
and checked reads (``mapped``) and the page cache (``page_cache``); ``s3`` is the object
store, with multipart uploads and lazy ranged reads. Every read of a checkpoint's bytes goes
through a ``source.ByteSource`` (a local file or an object); ``cache`` keeps whole copies of
objects by ETag. Nothing here knows a checkpoint format; it imports only ``..errors``.
"""
