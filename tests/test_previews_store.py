"""Previews into the artifact store: content-addressed, written atomically, safe to share."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from preview_worker import render
from preview_worker.previews import (
    StoredPreview,
    UnknownArtifact,
    open_artifact,
    read_manifest,
    store_preview,
)
from preview_worker.render import preview_hash, render_files, render_input, render_preview_files
from preview_worker.store import FileStore, InvalidArtifactPath, StorageError, filesystem

from .conftest import load_payload

MINIMAL = "preview_payload_minimal.json"
FULL = "preview_payload_full.json"


def entries(root: Path) -> list[str]:
    """Return every path under a directory, relative to it, sorted."""
    return sorted(str(path.relative_to(root)) for path in root.rglob("*"))


def assert_complete(store: FileStore, digest: str) -> None:
    """Fail unless a preview's directory holds exactly its manifest's files, byte for byte."""
    directory = store.directory_of(digest)
    manifest = read_manifest(store, digest)
    listed = {item["name"]: item for item in manifest["files"]}
    assert sorted(path.name for path in directory.iterdir()) == sorted([*listed, "manifest.json"])
    for name, item in listed.items():
        data = (directory / name).read_bytes()
        assert item["size"] == len(data)
        assert item["sha256"] == hashlib.sha256(data).hexdigest()
    assert manifest["hash"] == digest


def count_renders(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the renders the store asks for; return the list that grows by one per render."""
    renders: list[int] = []
    real = render_files

    def counting(preview: Any, checkpoint: Any) -> dict[str, bytes]:
        renders.append(1)
        return real(preview, checkpoint)

    monkeypatch.setattr("preview_worker.previews.render_files", counting)
    return renders


def test_a_preview_is_stored_under_its_hash_with_a_manifest(data_dir: Path) -> None:
    """Given the full payload, its files land in previews/<ab>/<hash>/ with a true manifest."""
    store = FileStore(data_dir)
    stored = store_preview(store, load_payload(FULL))
    assert not stored.cached and not stored.dry_run
    assert stored.location == str(data_dir / "previews" / stored.hash[:2] / stored.hash)
    assert_complete(store, stored.hash)
    manifest = read_manifest(store, stored.hash)
    assert {item["name"]: item["contentType"] for item in manifest["files"]} == {
        "index.html": "text/html; charset=utf-8",
        "thumbnail.png": "image/png",
    }
    assert entries(data_dir / "previews") == sorted(
        [stored.hash[:2], f"{stored.hash[:2]}/{stored.hash}"]
        + [
            f"{stored.hash[:2]}/{stored.hash}/{name}"
            for name in ("index.html", "manifest.json", "thumbnail.png")
        ]
    )
    assert stored.as_dict()["artifacts"] == manifest["files"]


def test_the_hash_covers_the_render_input_and_the_renderer_version(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Same content, same hash, whoever asks; new content or a new renderer, a new hash."""
    payload = load_payload(MINIMAL)
    digest = store_preview(FileStore("unused"), payload | {"dryRun": True}).hash
    assert len(digest) == 64
    same = payload | {"tutorialId": "another-tutorial", "revision": 3, "requestId": "r-1"}
    assert store_preview(FileStore("unused"), same | {"dryRun": True}).hash == digest
    changed = json.loads(json.dumps(payload))
    changed["content"]["steps"][0]["body"] += "!"
    assert store_preview(FileStore("unused"), changed | {"dryRun": True}).hash != digest
    monkeypatch.setattr(render, "RENDERER_VERSION", "next")
    assert store_preview(FileStore("unused"), payload | {"dryRun": True}).hash != digest


def test_a_stored_hash_is_a_cache_hit_that_renders_nothing(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given a stored preview, storing it again renders nothing and touches no file."""
    store = FileStore(data_dir)
    renders = count_renders(monkeypatch)
    first = store_preview(store, load_payload(FULL))
    assert first.location is not None
    times = {path.name: path.stat().st_mtime_ns for path in Path(first.location).iterdir()}
    again = store_preview(store, load_payload(FULL) | {"tutorialId": "copy", "revision": 2})
    assert renders == [1]
    assert again.cached and again.hash == first.hash and again.files == first.files
    assert {path.name: path.stat().st_mtime_ns for path in Path(first.location).iterdir()} == times


def test_a_dry_run_renders_in_memory_and_writes_nothing(data_dir: Path) -> None:
    """Given dryRun, the files and sizes are reported and the data directory stays empty."""
    payload = load_payload(FULL) | {"dryRun": True}
    stored = store_preview(FileStore(data_dir), payload)
    assert stored.dry_run and not stored.cached and stored.location is None
    sizes = {name: len(data) for name, data in render_preview_files(payload).items()}
    assert {item.name: item.size for item in stored.files} == sizes
    assert entries(data_dir) == []
    assert stored.as_dict()["dryRun"] is True


@pytest.mark.parametrize(
    "digest",
    ["", "../" * 8, "A" * 64, "a" * 63, "a" * 65, "a" * 64 + "\n", "g" * 64, "a" * 62 + "/."],
)
def test_a_bad_hash_is_refused(digest: str, data_dir: Path) -> None:
    """Only 64 lowercase hex digits name a preview."""
    with pytest.raises(InvalidArtifactPath):
        FileStore(data_dir).path_of(digest, "index.html")


UNSAFE_NAMES = ["", ".", "..", "../manifest.json", "index.html/..", "/etc/passwd", ".hidden"]


@pytest.mark.parametrize("name", UNSAFE_NAMES)
def test_a_name_that_could_leave_its_directory_is_refused_by_the_store(
    name: str, data_dir: Path
) -> None:
    """The store takes plain file names only: no separator, no dot-dot, no leading dot."""
    with pytest.raises(InvalidArtifactPath):
        FileStore(data_dir).path_of("a" * 64, name)


@pytest.mark.parametrize("name", [*UNSAFE_NAMES, "other.txt", "INDEX.HTML"])
def test_only_the_names_a_preview_has_are_artifacts(name: str, data_dir: Path) -> None:
    """Given a stored preview, any name but its own files' is an unknown artifact."""
    store = FileStore(data_dir)
    digest = store_preview(store, load_payload(MINIMAL)).hash
    stored, content_type = open_artifact(store, digest, "index.html")
    stored.stream.close()
    assert content_type == "text/html; charset=utf-8" and stored.size > 0
    with pytest.raises(UnknownArtifact):
        open_artifact(store, digest, name)


def test_a_good_path_stays_inside_the_data_directory(data_dir: Path) -> None:
    """A valid hash and name resolve below DATA_DIR/previews."""
    path = FileStore(data_dir).path_of("ab" * 32, "thumbnail.png")
    assert path.resolve().is_relative_to((data_dir / "previews").resolve())
    assert path.name == "thumbnail.png"


def test_a_data_directory_that_cannot_exist_raises_a_clear_error(tmp_path: Path) -> None:
    """Given DATA_DIR below a regular file, storing fails with StorageError and creates nothing."""
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where a directory should be")
    store = FileStore(blocker / "data")
    with pytest.raises(StorageError, match="cannot write artifacts under"):
        store_preview(store, load_payload(MINIMAL))
    assert entries(tmp_path) == ["not-a-directory"]


# Root ignores directory permissions; the not-a-directory test above covers root instead.
@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_a_read_only_data_directory_raises_a_clear_error(data_dir: Path) -> None:
    """Given a DATA_DIR without write permission, storing fails with StorageError."""
    data_dir.chmod(0o500)
    try:
        with pytest.raises(StorageError):
            store_preview(FileStore(data_dir), load_payload(MINIMAL))
        assert entries(data_dir) == []
    finally:
        data_dir.chmod(0o700)


@pytest.mark.parametrize("failing", ["rename", "write"])
def test_a_failed_write_leaves_no_partial_directory(
    failing: str, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given a disk error while writing or renaming, StorageError is raised and nothing is left."""
    written: list[Path] = []
    real_write = filesystem._write_file

    def write_then_fail(path: Path, data: bytes) -> None:
        real_write(path, data)
        written.append(path)
        if len(written) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")

    def rename_fails(source: Any, target: Any) -> None:
        raise OSError(errno.EIO, "Input/output error")

    if failing == "write":
        monkeypatch.setattr(filesystem, "_write_file", write_then_fail)
    else:
        monkeypatch.setattr(os, "rename", rename_fails)
    store = FileStore(data_dir)
    with pytest.raises(StorageError):
        store_preview(store, load_payload(MINIMAL))
    assert [path.name for path in (data_dir / "previews").rglob("*") if path.is_file()] == []
    assert all(not path.name.startswith(".") for path in (data_dir / "previews").rglob("*"))


def test_a_writer_that_loses_the_race_keeps_the_winners_copy(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given the hash appears while we render, we succeed, keep the first copy, leave no temp."""
    store = FileStore(data_dir)
    winner = store_preview(store, load_payload(FULL))
    assert winner.location is not None
    before = {path.name: path.stat().st_ino for path in Path(winner.location).iterdir()}
    monkeypatch.setattr(FileStore, "exists", lambda self, digest: False)
    loser = store_preview(store, load_payload(FULL))
    assert loser.hash == winner.hash and not loser.cached and loser.files == winner.files
    assert {path.name: path.stat().st_ino for path in Path(winner.location).iterdir()} == before
    assert entries(data_dir / "previews" / winner.hash[:2]) == sorted(
        [winner.hash] + [f"{winner.hash}/{name}" for name in before]
    )


# A worker process that renders, then waits for the other one to have rendered too, so both
# reach the rename together: one of them must lose the race and still succeed.
RACER = """
import json, sys, time
from pathlib import Path
from preview_worker import previews, store
root, payload, me, other = sys.argv[1:5]
render = previews.render_files
def render_then_wait(preview, checkpoint):
    files = render(preview, checkpoint)
    Path(me).touch()
    deadline = time.monotonic() + 60
    while not Path(other).exists() and time.monotonic() < deadline:
        time.sleep(0.001)
    return files
previews.render_files = render_then_wait
stored = previews.store_preview(store.FileStore(root), json.loads(Path(payload).read_text()))
print(json.dumps(stored.as_dict()))
"""


def test_two_processes_storing_one_preview_at_once_both_succeed(tmp_path: Path) -> None:
    """Given two processes rendering the same payload at once, one complete copy is left."""
    data_dir = tmp_path / "data"
    payload_file = tmp_path / "payload.json"
    payload_file.write_text(json.dumps(load_payload(FULL)))
    flags = [tmp_path / "rendered-0", tmp_path / "rendered-1"]
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, str(data_dir), str(payload_file), str(mine), str(theirs)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for mine, theirs in (flags, flags[::-1])
    ]
    results = [racer.communicate(timeout=120) for racer in racers]
    assert [racer.returncode for racer in racers] == [0, 0], [err for _, err in results]
    stored = [json.loads(out) for out, _ in results]
    assert [item["cached"] for item in stored] == [False, False]  # both rendered
    assert stored[0] == stored[1]
    digest = stored[0]["artifactHash"]
    assert entries(data_dir / "previews") == sorted(
        [digest[:2], f"{digest[:2]}/{digest}"]
        + [
            f"{digest[:2]}/{digest}/{name}"
            for name in ("index.html", "manifest.json", "thumbnail.png")
        ]
    )
    assert_complete(FileStore(data_dir), digest)


def test_stored_preview_reports_small_json(data_dir: Path) -> None:
    """The result of a store is JSON-able and says nothing about server paths."""
    stored = store_preview(FileStore(data_dir), load_payload(MINIMAL))
    assert isinstance(stored, StoredPreview)
    data = json.loads(json.dumps(stored.as_dict()))
    assert set(data) == {"artifactHash", "artifacts", "cached", "dryRun", "warnings"}
    assert str(data_dir) not in json.dumps(data)
    assert data["artifactHash"] == preview_hash(render_input(load_payload(MINIMAL)))


def test_directories_abandoned_by_killed_writers_are_removed(data_dir: Path) -> None:
    """Given an old and a fresh temporary directory, only the old one is removed."""
    store = FileStore(data_dir)
    stored = store_preview(store, load_payload(MINIMAL))
    shard = data_dir / "previews" / stored.hash[:2]
    old, fresh = shard / f".{stored.hash}.old", shard / f".{stored.hash}.fresh"
    for path in (old, fresh):
        path.mkdir()
        (path / "index.html").write_bytes(b"half a page")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    assert store.remove_abandoned(older_than=3600) == 1
    assert not old.exists() and fresh.exists()
    assert_complete(store, stored.hash)
