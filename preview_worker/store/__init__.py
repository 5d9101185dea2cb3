"""The artifact store: sets of files under content keys, written atomically; knows no payload."""

from __future__ import annotations

from preview_worker.settings import Settings
from preview_worker.store.base import (
    ArtifactStore,
    InvalidArtifactPath,
    StorageError,
    StoredFile,
    check_key,
    check_name,
)
from preview_worker.store.directory import DirectoryStore
from preview_worker.store.filesystem import FileStore


def store_for(settings: Settings) -> ArtifactStore:
    """Return the artifact store the settings call for: files under DATA_DIR."""
    return FileStore(settings.data_dir)


__all__ = [
    "ArtifactStore",
    "DirectoryStore",
    "FileStore",
    "InvalidArtifactPath",
    "StorageError",
    "StoredFile",
    "check_key",
    "check_name",
    "store_for",
]
