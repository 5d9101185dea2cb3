"""A payload becomes stored artifacts: validate, hash, render, store, describe, dry run."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from preview_worker import render
from preview_worker.errors import InvalidPayload, PreviewRefused
from preview_worker.render import (
    Checkpoint,
    preview_hash,
    render_files,
    render_input,
    render_warnings,
)
from preview_worker.render.limits import Budget, Limits, RenderLimitExceeded, budgeted
from preview_worker.render.page import CONTENT_SECURITY_POLICY
from preview_worker.schema import validate_payload
from preview_worker.settings import Settings
from preview_worker.store import ArtifactStore, InvalidArtifactPath, StoredFile

MANIFEST = "manifest.json"
CONTENT_TYPES = {name: content_type for name, content_type in render.ARTIFACTS.values()} | {
    MANIFEST: "application/json"
}


def artifact_policy(frame_ancestors: str = "'none'") -> str:
    """Return the CSP of a served artifact: the page's own, and who may frame it."""
    return f"{CONTENT_SECURITY_POLICY}; script-src 'none'; frame-ancestors {frame_ancestors}"


class UnknownArtifact(LookupError):
    """No stored preview has this file: a bad hash, a name we never write, or not stored."""


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
    location: str | None = None  # where the store keeps the artifacts; None on a dry run
    warnings: list[str] = field(default_factory=list)  # what the artifacts cannot show

    def as_dict(self) -> dict[str, Any]:
        """Return a small JSON-able summary, fit for a job result or the command line."""
        # The location stays out: a server's paths are no business of an HTTP client.
        return {
            "artifactHash": self.hash,
            "artifacts": [item.as_dict() for item in self.files],
            "cached": self.cached,
            "dryRun": self.dry_run,
            "warnings": self.warnings,
        }


def describe(name: str, data: bytes) -> ArtifactFile:
    """Return the manifest entry of a file's bytes."""
    return ArtifactFile(name, len(data), hashlib.sha256(data).hexdigest(), CONTENT_TYPES[name])


def manifest_bytes(digest: str, files: list[ArtifactFile], warnings: list[str]) -> bytes:
    """Return the manifest of a preview: its hash, the renderer version, every file, warnings."""
    entries = [item.as_dict() for item in sorted(files, key=lambda item: item.name)]
    data = {
        "hash": digest,
        "rendererVersion": render.RENDERER_VERSION,
        "files": entries,
        "warnings": warnings,
    }
    return json.dumps(data, indent=2, sort_keys=True).encode("utf-8") + b"\n"


def read_manifest(store: ArtifactStore, digest: str) -> dict[str, Any]:
    """Return the manifest of a stored preview; FileNotFoundError when there is none."""
    manifest: dict[str, Any] = json.loads(store.read(digest, MANIFEST))
    return manifest


def stored_preview(store: ArtifactStore, digest: str) -> StoredPreview:
    """Describe a preview already in the store."""
    manifest = read_manifest(store, digest)
    files = [
        ArtifactFile(item["name"], item["size"], item["sha256"], item["contentType"])
        for item in manifest["files"]
    ]
    return StoredPreview(
        digest,
        files,
        cached=True,
        location=store.location(digest),
        warnings=manifest.get("warnings", []),
    )


def limits_of(settings: Settings) -> Limits:
    """Return the bounds of one render that the settings give."""
    return Limits(
        seconds=settings.render_timeout,
        page_bytes=settings.max_page_bytes,
        highlight_seconds=settings.highlight_timeout,
        highlight_total_seconds=10 * settings.highlight_timeout,
    )


def check_payload(payload: Any) -> None:
    """Raise InvalidPayload, naming every problem, unless the payload is valid."""
    problems = validate_payload(payload)
    if problems:
        raise InvalidPayload("; ".join(str(problem) for problem in problems)[:1000])


def store_preview(
    store: ArtifactStore,
    payload: dict[str, Any],
    checkpoint: Checkpoint | None = None,
    budget: Budget | None = None,
) -> StoredPreview:
    """Render a valid payload into the store, unless stored already; dryRun writes nothing.

    checkpoint hears each stage (each format, then "write") before it starts. The render
    keeps within the budget (default limits when None); one that passes a bound raises
    PreviewRefused, a permanent failure that names the bound.
    """
    try:
        with budgeted(budget or Budget()):
            return _render_and_store(store, payload, checkpoint or (lambda stage: None))
    except RenderLimitExceeded as error:
        raise PreviewRefused(str(error)) from None


def _render_and_store(
    store: ArtifactStore, payload: dict[str, Any], check: Checkpoint
) -> StoredPreview:
    """Render a payload's artifacts and put them in the store, or describe a dry run's."""
    preview = render_input(payload)
    digest = preview_hash(preview)
    if payload.get("dryRun") is True:
        files = render_files(preview, check)
        listed = [describe(name, data) for name, data in files.items()]
        return StoredPreview(digest, listed, dry_run=True, warnings=render_warnings(preview))
    if store.exists(digest):
        return stored_preview(store, digest)  # its warnings come from its manifest
    warnings = render_warnings(preview)
    files = render_files(preview, check)
    listed = [describe(name, data) for name, data in files.items()]
    check("write")
    store.put(digest, files | {MANIFEST: manifest_bytes(digest, listed, warnings)})
    return StoredPreview(digest, listed, location=store.location(digest), warnings=warnings)


def build_preview(
    store: ArtifactStore,
    payload: Any,
    checkpoint: Checkpoint | None = None,
    budget: Budget | None = None,
) -> StoredPreview:
    """Check a payload, then render and store its preview: what a worker does with a job."""
    check_payload(payload)
    return store_preview(store, payload, checkpoint, budget)


def open_artifact(store: ArtifactStore, digest: str, name: str) -> tuple[StoredFile, str]:
    """Open one stored artifact for streaming, with its content type, or raise UnknownArtifact."""
    if name not in CONTENT_TYPES:
        raise UnknownArtifact(f"no artifact is called {name!r}")
    try:
        return store.open(digest, name), CONTENT_TYPES[name]
    except (InvalidArtifactPath, FileNotFoundError, NotADirectoryError):
        raise UnknownArtifact(f"no artifact {digest}/{name}") from None
