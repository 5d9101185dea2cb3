"""Artifacts as files: DATA_DIR/previews/<ab>/<key>/, each set renamed into place whole."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

from preview_worker.store.base import (
    ABANDONED_AFTER,
    StorageError,
    StoredFile,
    check_key,
    check_name,
)

PREVIEWS = "previews"  # the store's folder inside DATA_DIR


def _write_file(path: Path, data: bytes) -> None:
    """Write a new file and flush it to disk, so a renamed directory never holds half a file."""
    with open(path, "xb") as stream:
        stream.write(data)
        stream.flush()
        os.fsync(stream.fileno())


def _fsync_directory(path: Path) -> None:
    """Flush a directory's entries to disk, where the platform allows it."""
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass  # some file systems cannot sync a directory; the rename is still atomic
    finally:
        os.close(descriptor)


class FileStore:
    """Sets of files under a data directory, written once, never changed."""

    def __init__(self, root: Path | str) -> None:
        """Use DATA_DIR (root); the sets live in its previews/ folder."""
        self.root = Path(root)
        self.previews = self.root / PREVIEWS

    def __repr__(self) -> str:
        """Show where the store is."""
        return f"FileStore({str(self.root)!r})"

    def directory_of(self, key: str) -> Path:
        """Return the directory of a key, refusing anything that is not a key."""
        check_key(key)
        return self.previews / key[:2] / key

    def path_of(self, key: str, name: str) -> Path:
        """Return the path of one file, refusing any name that could leave its directory."""
        return self.directory_of(key) / check_name(name)

    def exists(self, key: str) -> bool:
        """Say whether the files of a key are stored (complete, as directories arrive whole)."""
        return self.directory_of(key).is_dir()

    def read(self, key: str, name: str) -> bytes:
        """Return one stored file; FileNotFoundError when there is none."""
        return self.path_of(key, name).read_bytes()

    def open(self, key: str, name: str) -> StoredFile:
        """Open one stored file to read it in pieces; FileNotFoundError when there is none."""
        path = self.path_of(key, name)
        try:
            stream = open(path, "rb")  # the caller closes it
        except (FileNotFoundError, NotADirectoryError):
            raise
        except OSError as error:  # not allowed, a failing disk, a lost network mount
            raise StorageError(f"cannot read {path}: {error}") from error
        return StoredFile(stream, os.fstat(stream.fileno()).st_size)

    def location(self, key: str) -> str:
        """Return the directory of a key."""
        return str(self.directory_of(key))

    def check(self) -> None:
        """Make sure files can be made in the store now, leaving nothing behind.

        A nameless file is made in the store's folder and dropped; before the first preview
        made that folder, the closest folder that exists must let one be made in it.
        """
        try:
            folder = next(path for path in (self.previews, *self.previews.parents)
                          if path.exists())
            if folder == self.previews:
                with tempfile.TemporaryFile(dir=folder):
                    pass
            elif not folder.is_dir():
                raise NotADirectoryError(errno.ENOTDIR, "not a directory", str(folder))
            elif not os.access(folder, os.W_OK | os.X_OK):
                raise PermissionError(errno.EACCES, "cannot make a folder in", str(folder))
        except OSError as error:
            raise StorageError(f"cannot write under {self.previews}: {error}") from error

    def remove_abandoned(self, older_than: float = ABANDONED_AFTER) -> int:
        """Remove temporary directories left by writers killed mid-write; return how many."""
        cutoff = time.time() - older_than
        abandoned = [
            path
            for path in self.previews.glob("[0-9a-f][0-9a-f]/.*")
            if path.is_dir() and path.stat().st_mtime < cutoff
        ]
        for path in abandoned:
            shutil.rmtree(path, ignore_errors=True)
        return len(abandoned)

    def put(self, key: str, files: Mapping[str, bytes]) -> None:
        """Write the files into a temporary directory, then rename it into place."""
        target = self.directory_of(key)
        names = [check_name(name) for name in files]
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            # A leading dot marks an unfinished copy (see remove_abandoned).
            temporary = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=target.parent))
        except OSError as error:
            raise StorageError(f"cannot write artifacts under {self.previews}: {error}") from error
        try:
            for name in names:
                _write_file(temporary / name, files[name])
            os.chmod(temporary, 0o755)  # mkdtemp makes it private; artifacts are for serving
            self._rename(temporary, target)
        except BaseException as error:
            shutil.rmtree(temporary, ignore_errors=True)
            if isinstance(error, OSError):
                raise StorageError(f"cannot write artifacts to {target}: {error}") from error
            raise

    @staticmethod
    def _rename(temporary: Path, target: Path) -> None:
        """Move a finished directory into place; if another writer won, keep theirs."""
        try:
            os.rename(temporary, target)
        except OSError as error:
            if error.errno not in (errno.EEXIST, errno.ENOTEMPTY) or not target.is_dir():
                raise
            # The same key means the same bytes: the other writer's copy is as good as ours.
            shutil.rmtree(temporary, ignore_errors=True)
            return
        _fsync_directory(target.parent)
