"""Content-addressed artifact store: DATA_DIR/previews/<ab>/<hash>/, each written atomically."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from preview_worker.canonical import canonical_json
from preview_worker.render import (
    ARTIFACTS,
    RENDERER_VERSION,
    Checkpoint,
    render_files,
    render_input,
)
from preview_worker.render.model import RenderInput

MANIFEST = "manifest.json"
CONTENT_TYPES = {name: content_type for name, content_type in ARTIFACTS.values()} | {
    MANIFEST: "application/json"
}
ARTIFACT_NAMES = frozenset(CONTENT_TYPES)  # the only names a path may end with
HASH_PATTERN = re.compile(r"[0-9a-f]{64}")
PREVIEWS = "previews"  # the store's folder inside DATA_DIR
ABANDONED_AFTER = 3600.0  # seconds; a temporary directory this old lost its writer


class StorageError(OSError):
    """The artifact store could not be read or written; nothing partial was left behind."""


class InvalidArtifactPath(ValueError):
    """A hash or file name that is not one the store could have made."""


@dataclass(frozen=True)
class ArtifactFile:
    """One file of a preview, as listed in its manifest."""

    name: str
    size: int  # bytes
    sha256: str
    content_type: str

    def as_dict(self) -> dict[str, Any]:
        """Return the file as the JSON object of the manifest (camelCase)."""
        return {
            "name": self.name,
            "size": self.size,
            "sha256": self.sha256,
            "contentType": self.content_type,
        }


@dataclass(frozen=True)
class StoredPreview:
    """What storing a preview did: its hash, its files, and whether anything was written."""

    hash: str
    files: list[ArtifactFile] = field(default_factory=list)
    cached: bool = False  # the artifacts existed already and nothing was rendered
    dry_run: bool = False  # rendered in memory; nothing was written
    directory: Path | None = None  # where the artifacts are; None on a dry run

    def as_dict(self) -> dict[str, Any]:
        """Return a small JSON-able summary, fit for a job result or the command line."""
        # The directory stays out: a server's paths are no business of an HTTP client.
        return {
            "artifactHash": self.hash,
            "artifacts": [item.as_dict() for item in self.files],
            "cached": self.cached,
            "dryRun": self.dry_run,
        }


def preview_hash(preview: RenderInput) -> str:
    """Return the SHA-256 of a render input and the renderer version: the artifacts' address."""
    return hashlib.sha256(canonical_json([RENDERER_VERSION, preview.canonical()])).hexdigest()


def describe(name: str, data: bytes) -> ArtifactFile:
    """Return the manifest entry of a file's bytes."""
    return ArtifactFile(name, len(data), hashlib.sha256(data).hexdigest(), CONTENT_TYPES[name])


def manifest_bytes(digest: str, files: list[ArtifactFile]) -> bytes:
    """Return the manifest of a preview: its hash, the renderer version and every file."""
    entries = [item.as_dict() for item in sorted(files, key=lambda item: item.name)]
    data = {"hash": digest, "rendererVersion": RENDERER_VERSION, "files": entries}
    return json.dumps(data, indent=2, sort_keys=True).encode("utf-8") + b"\n"


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


class ArtifactStore:
    """Previews stored by content hash under a data directory, written once, never changed."""

    def __init__(self, root: Path | str) -> None:
        """Use DATA_DIR (root); previews live in its previews/ folder."""
        self.root = Path(root)
        self.previews = self.root / PREVIEWS

    def __repr__(self) -> str:
        """Show where the store is."""
        return f"ArtifactStore({str(self.root)!r})"

    def directory_of(self, digest: str) -> Path:
        """Return the directory of a preview hash, refusing anything that is not a hash."""
        if not isinstance(digest, str) or not HASH_PATTERN.fullmatch(digest):
            raise InvalidArtifactPath("an artifact hash is 64 lowercase hexadecimal digits")
        return self.previews / digest[:2] / digest

    def path_of(self, digest: str, name: str) -> Path:
        """Return the path of one artifact, refusing any name the store does not write."""
        if name not in ARTIFACT_NAMES:
            raise InvalidArtifactPath(f"no artifact is called {name!r}")
        return self.directory_of(digest) / name

    def exists(self, digest: str) -> bool:
        """Say whether the artifacts of a hash are stored (complete, as they arrive whole)."""
        return self.path_of(digest, MANIFEST).is_file()

    def read_manifest(self, digest: str) -> dict[str, Any]:
        """Return the manifest of a stored preview; FileNotFoundError when there is none."""
        manifest: dict[str, Any] = json.loads(self.path_of(digest, MANIFEST).read_bytes())
        return manifest

    def _stored(self, digest: str) -> StoredPreview:
        """Describe a preview already in the store."""
        files = [
            ArtifactFile(item["name"], item["size"], item["sha256"], item["contentType"])
            for item in self.read_manifest(digest)["files"]
        ]
        return StoredPreview(digest, files, cached=True, directory=self.directory_of(digest))

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

    def store_preview(
        self, payload: dict[str, Any], checkpoint: Checkpoint | None = None
    ) -> StoredPreview:
        """Render a valid payload into the store, unless stored already; dryRun writes nothing.

        checkpoint hears each stage (each format, then "write") before it starts.
        """
        check = checkpoint or (lambda stage: None)
        preview = render_input(payload)
        digest = preview_hash(preview)
        if payload.get("dryRun") is True:
            files = render_files(preview, check)
            listed = [describe(name, data) for name, data in files.items()]
            return StoredPreview(digest, listed, dry_run=True)
        if self.exists(digest):
            return self._stored(digest)
        files = render_files(preview, check)
        listed = [describe(name, data) for name, data in files.items()]
        check("write")
        self._write(digest, files | {MANIFEST: manifest_bytes(digest, listed)})
        return StoredPreview(digest, listed, directory=self.directory_of(digest))

    def _write(self, digest: str, files: dict[str, bytes]) -> None:
        """Write a preview's files into a temporary directory, then rename it into place."""
        target = self.directory_of(digest)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            # A leading dot marks an unfinished copy (see remove_abandoned).
            temporary = Path(tempfile.mkdtemp(prefix=f".{digest}.", dir=target.parent))
        except OSError as error:
            raise StorageError(f"cannot write artifacts under {self.previews}: {error}") from error
        try:
            for name, data in files.items():
                _write_file(temporary / self.path_of(digest, name).name, data)
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
            # The same hash means the same bytes: the other writer's copy is as good as ours.
            shutil.rmtree(temporary, ignore_errors=True)
            return
        _fsync_directory(target.parent)
