"""One preview's files straight into a folder of the user's choosing (`render --out DIR`)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

from preview_worker.store.base import StorageError, StoredFile, check_name


class DirectoryStore:
    """A folder that takes the files of one preview as they are, with no key in the path."""

    def __init__(self, directory: Path | str) -> None:
        """Write into this folder, made when missing."""
        self.directory = Path(directory)

    def __repr__(self) -> str:
        """Show the folder."""
        return f"DirectoryStore({str(self.directory)!r})"

    def put(self, key: str, files: Mapping[str, bytes]) -> None:
        """Write each file whole under its name, replacing an earlier render's."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            for name, data in files.items():
                # Each file appears whole: written aside, then renamed over the old one.
                handle, temporary = tempfile.mkstemp(prefix=".", dir=self.directory)
                with os.fdopen(handle, "wb") as stream:
                    stream.write(data)
                os.replace(temporary, self.directory / check_name(name))
        except OSError as error:
            raise StorageError(f"cannot write artifacts to {self.directory}: {error}") from error

    def exists(self, key: str) -> bool:
        """Say no: a folder of the user's is rendered into afresh every time."""
        return False

    def read(self, key: str, name: str) -> bytes:
        """Return one written file."""
        return (self.directory / check_name(name)).read_bytes()

    def open(self, key: str, name: str) -> StoredFile:
        """Open one written file."""
        stream = open(self.directory / check_name(name), "rb")  # the caller closes it
        return StoredFile(stream, os.fstat(stream.fileno()).st_size)

    def location(self, key: str) -> str:
        """Return the folder."""
        return str(self.directory)

    def remove_abandoned(self, older_than: float = 0.0) -> int:
        """Remove nothing: a folder of the user's is theirs to tidy."""
        return 0

    def check(self) -> None:
        """Check nothing: the folder is made, or refused, when the files are written."""
