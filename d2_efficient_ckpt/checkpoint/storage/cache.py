"""A local cache of whole objects read from a store, keyed by their ETag (off by default).

Reading in ranges fetches only what a load uses, every time. A machine that loads the same
object again and again (evaluation jobs, fine-tuning sweeps from one set of weights) can
keep a whole copy instead: ``CHECKPOINT.LOAD.REMOTE_CACHE_DIR``. A copy is used only while
the object's ETag is the one it was downloaded under; a new version replaces it. Copies
appear whole (downloaded under a temporary name, then renamed) and only this cache's own
folders are ever removed.
"""

import hashlib
import logging
import os
import shutil
import tempfile

from .registry import store_for

__all__ = ["cached_copy"]

logger = logging.getLogger(__name__)


def cached_copy(url: str, cache_dir: str) -> str:
    """A local file holding the object ``url`` as it is now, from the cache or downloaded.

    Raises:
        FileNotFoundError: there is no such object.
        RemoteStorageError: the store refused or failed.
    """
    store = store_for(url)
    info = store.info(url)
    # One folder per URL; inside it, one file per version (the ETag, made safe as a name).
    home = os.path.join(cache_dir, hashlib.sha256(url.encode()).hexdigest()[:32])
    version = hashlib.sha256(info.etag.encode()).hexdigest()[:32] if info.etag else ""
    local = os.path.join(home, version, os.path.basename(url))
    if version and os.path.isfile(local) and os.path.getsize(local) == info.size:
        logger.info(f"Reading {url} from the cache: {local}")
        return local
    os.makedirs(home, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".download-", dir=home)
    try:
        got = store.download(url, os.path.join(tmp, os.path.basename(url)))
        target = os.path.join(home, hashlib.sha256(got.etag.encode()).hexdigest()[:32])
        for old in os.listdir(home):  # earlier versions of this object
            if not old.startswith(".") and old != os.path.basename(target):
                shutil.rmtree(os.path.join(home, old), ignore_errors=True)
        if os.path.isdir(target):
            shutil.rmtree(target)
        os.rename(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return os.path.join(target, os.path.basename(url))
