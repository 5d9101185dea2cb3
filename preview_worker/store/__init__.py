"""The artifact store: sets of files under content keys, written atomically; knows no payload."""

from __future__ import annotations

import functools
import os
from urllib.parse import unquote, urlsplit

from preview_worker.settings import Settings
from preview_worker.store.base import (
    ArtifactStore,
    InvalidArtifactPath,
    StorageError,
    StoredFile,
    StoreUnreachable,
    check_key,
    check_name,
)
from preview_worker.store.directory import DirectoryStore
from preview_worker.store.filesystem import FileStore


def store_for(settings: Settings) -> ArtifactStore:
    """Return the artifact store the settings call for: PREVIEW_STORE_URL, else DATA_DIR."""
    url = settings.store_url
    if url.startswith("s3://"):
        return _object_store(os.getpid(), url, settings.s3_endpoint_url)
    return FileStore(unquote(urlsplit(url).path) if url else settings.data_dir)


@functools.lru_cache(maxsize=4)
def _object_store(process: int, url: str, endpoint_url: str | None) -> ArtifactStore:
    """Return one S3Store per process and URL: its client pools connections across jobs.

    The process id is part of the key: a forked child must not share its parent's sockets.
    """
    # Imported here: boto3 takes a quarter of a second to import, and file stores never need it.
    from preview_worker.store.s3 import S3Store

    return S3Store.from_url(url, endpoint_url)


__all__ = [
    "ArtifactStore",
    "DirectoryStore",
    "FileStore",
    "InvalidArtifactPath",
    "StorageError",
    "StoreUnreachable",
    "StoredFile",
    "check_key",
    "check_name",
    "store_for",
]
