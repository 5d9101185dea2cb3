"""What every artifact store offers: a set of files put under a key at once, read back, swept.

A store knows keys and file names, nothing of payloads or previews.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import BinaryIO, NamedTuple, Protocol

KEY_PATTERN = re.compile(r"[0-9a-f]{64}")  # a SHA-256 in hex: stores are content-addressed
# A plain file name: no separator, no leading dot (a store's own unfinished copies use one).
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
ABANDONED_AFTER = 3600.0  # seconds; an unfinished copy this old lost its writer


class StorageError(OSError):
    """The artifact store could not be read or written; nothing partial can be seen."""


class StoreUnreachable(StorageError):
    """The artifact store did not answer in time: down, or cut off; a caller may answer 503."""


class InvalidArtifactPath(ValueError):
    """A key or file name that is not one a store could have made."""


def check_key(key: str) -> str:
    """Return a key that is 64 lowercase hexadecimal digits, or raise InvalidArtifactPath."""
    if not isinstance(key, str) or not KEY_PATTERN.fullmatch(key):
        raise InvalidArtifactPath("an artifact hash is 64 lowercase hexadecimal digits")
    return key


def check_name(name: str) -> str:
    """Return a plain file name, or raise InvalidArtifactPath."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name) or ".." in name:
        raise InvalidArtifactPath(f"no artifact is called {name!r}")
    return name


class StoredFile(NamedTuple):
    """One stored file opened for reading: the stream (close it) and its size in bytes."""

    stream: BinaryIO
    size: int


class ArtifactStore(Protocol):
    """Sets of files under content keys: each set appears whole or not at all, never changes."""

    def put(self, key: str, files: Mapping[str, bytes]) -> None:
        """Store a set of files under a key at once; if the key is taken, keep what is there."""

    def exists(self, key: str) -> bool:
        """Say whether a complete set of files is stored under a key."""

    def read(self, key: str, name: str) -> bytes:
        """Return one stored file; FileNotFoundError when there is none."""

    def open(self, key: str, name: str) -> StoredFile:
        """Open one stored file to read it in pieces; FileNotFoundError when there is none."""

    def location(self, key: str) -> str:
        """Say where the files of a key are, for people (a directory, a URL)."""

    def remove_abandoned(self, older_than: float = ABANDONED_AFTER) -> int:
        """Remove unfinished copies left by writers killed mid-write; return how many."""

    def check(self) -> None:
        """Make one cheap request that shows the store can be used now; StorageError if not."""
