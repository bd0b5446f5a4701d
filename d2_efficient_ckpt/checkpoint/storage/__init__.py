"""Storage: where checkpoint files live, behind one small interface (``base.Store``).

``registry.store_for(path)`` gives the store of a path; ``local`` is the POSIX store, with
its atomic writes (``atomic``) and the clean-up of interrupted ones (``stale``).
"""
