"""The S3-compatible artifact store, against a real S3 API (moto_server on loopback).

A preview's files land under <prefix>/<ab>/<hash>/ with the manifest written last: until
it is, the preview does not exist and none of its files can be read.
"""

from __future__ import annotations

import hashlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import pytest
import redis
from flask.testing import FlaskClient

from preview_worker import health, keys, queueing
from preview_worker.embedded_redis import free_port
from preview_worker.errors import is_permanent
from preview_worker.previews import UnknownArtifact, open_artifact, read_manifest, store_preview
from preview_worker.settings import Settings, SettingsError, load_settings
from preview_worker.signing import signer_for
from preview_worker.store import (
    ArtifactStore,
    FileStore,
    InvalidArtifactPath,
    StorageError,
    StoreUnreachable,
    store_for,
)
from preview_worker.store.s3 import S3Store
from preview_worker.web.shared import preview_of

from .conftest import API_TOKEN, AppMaker, load_payload
from .object_store import Link, ObjectStore
from .processes import wait_until
from .test_health import register_worker

MINIMAL = "preview_payload_minimal.json"
FULL = "preview_payload_full.json"
FILES = ("index.html", "manifest.json", "thumbnail.png")
A_KEY = "ab" * 32


def s3_store(object_store: ObjectStore) -> S3Store:
    """Return the store of a test's bucket, as the service's settings would make it."""
    return S3Store.from_url(object_store.url, object_store.endpoint_url)


def requests_of(store: S3Store) -> list[str]:
    """Record the name of each request the store's client sends, in a list that grows."""
    sent: list[str] = []

    def record(model: Any, **_: Any) -> None:
        sent.append(model.name)

    store.client.meta.events.register("before-call.s3", record)
    return sent


def read_in_pieces(stream: BinaryIO, size: int = 4096) -> Iterator[bytes]:
    """Read a stream to its end a few bytes at a time, as the API streams a file."""
    while piece := stream.read(size):
        assert len(piece) <= size
        yield piece


def set_keys(digest: str, prefix: str = "previews") -> list[str]:
    """Return the object keys of a complete preview."""
    return [f"{prefix}/{digest[:2]}/{digest}/{name}" for name in FILES]


# The interface, on either store ---------------------------------------------------------


@pytest.fixture(params=["file", "s3"])
def any_store(request: pytest.FixtureRequest, data_dir: Path) -> ArtifactStore:
    """Give a FileStore, then an S3Store: what every artifact store must do alike."""
    if request.param == "file":
        return FileStore(data_dir)
    return s3_store(request.getfixturevalue("object_store"))


def test_a_set_is_put_read_and_streamed_back(any_store: ArtifactStore) -> None:
    """Given a set put under a key, it exists, each file reads back whole and in pieces."""
    files = {"index.html": b"<p>page</p>", "thumbnail.png": bytes(range(256)) * 1000,
             "manifest.json": b"{}"}
    assert not any_store.exists(A_KEY)
    any_store.put(A_KEY, files)
    assert any_store.exists(A_KEY)
    for name, data in files.items():
        assert any_store.read(A_KEY, name) == data
        stored = any_store.open(A_KEY, name)
        with stored.stream:
            assert stored.size == len(data) and b"".join(read_in_pieces(stored.stream)) == data


def test_putting_a_stored_key_again_keeps_what_is_there(any_store: ArtifactStore) -> None:
    """Given a stored key, a second put of it changes nothing (same key, same bytes)."""
    any_store.put(A_KEY, {"index.html": b"first", "manifest.json": b"{}"})
    any_store.put(A_KEY, {"index.html": b"second", "manifest.json": b"{}"})
    assert any_store.read(A_KEY, "index.html") == b"first"


def test_a_missing_file_is_file_not_found(any_store: ArtifactStore) -> None:
    """Given no set, or a set without that file, reading raises FileNotFoundError."""
    with pytest.raises(FileNotFoundError):
        any_store.read(A_KEY, "index.html")
    any_store.put(A_KEY, {"index.html": b"page", "manifest.json": b"{}"})
    with pytest.raises(FileNotFoundError):
        any_store.open(A_KEY, "thumbnail.png")


@pytest.mark.parametrize(("key", "name"), [("A" * 64, "index.html"), ("a" * 63, "index.html"),
                                           (A_KEY, "../index.html"), (A_KEY, ".unfinished")])
def test_a_bad_key_or_name_is_refused(any_store: ArtifactStore, key: str, name: str) -> None:
    """Only 64 lowercase hex digits name a set, and only plain names a file."""
    with pytest.raises(InvalidArtifactPath):
        any_store.open(key, name)


# Round trip of a preview ---------------------------------------------------------------


def test_a_preview_round_trips_under_the_same_keys_as_on_disk(
    object_store: ObjectStore, data_dir: Path
) -> None:
    """Given the full payload, the bucket holds what DATA_DIR/previews would, byte for byte."""
    store = s3_store(object_store)
    stored = store_preview(store, load_payload(FULL))
    assert not stored.cached
    assert stored.location == f"{object_store.url}/{stored.hash[:2]}/{stored.hash}/"
    assert object_store.keys() == set_keys(stored.hash)  # no pending entry is left
    on_disk = FileStore(data_dir)
    assert store_preview(on_disk, load_payload(FULL)).hash == stored.hash
    previews = data_dir / "previews"
    paths = sorted(str(path.relative_to(previews)) for path in previews.rglob("*.*"))
    assert [f"previews/{path}" for path in paths] == object_store.keys()
    for path in paths:
        name = Path(path).name
        assert store.read(stored.hash, name) == (previews / path).read_bytes()
    manifest = read_manifest(store, stored.hash)
    for item in manifest["files"]:
        data = store.read(stored.hash, item["name"])
        assert item["size"] == len(data) and item["sha256"] == hashlib.sha256(data).hexdigest()


def test_a_stored_preview_is_a_cache_hit_and_exists_is_one_request(
    object_store: ObjectStore,
) -> None:
    """Given a stored preview, storing it again writes nothing; exists() sends one HEAD."""
    store = s3_store(object_store)
    first = store_preview(store, load_payload(MINIMAL))
    sent = requests_of(store)
    assert store.exists(first.hash) and sent == ["HeadObject"]
    sent.clear()
    again = store_preview(store, load_payload(MINIMAL) | {"tutorialId": "copy"})
    assert again.cached and again.files == first.files
    assert sent == ["HeadObject", "GetObject"]  # the manifest: is it there, what does it say


def test_the_api_streams_an_artifact_from_the_bucket(
    object_store: ObjectStore, make_app: AppMaker
) -> None:
    """Given a preview in the bucket, its signed URL serves the file with its length."""
    app = make_app(PREVIEW_API_TOKENS=API_TOKEN, **object_store.environment())
    parts = preview_of(app)
    assert isinstance(parts.store, S3Store)
    stored = store_preview(parts.store, load_payload(FULL))
    client: FlaskClient = app.test_client()
    answer = client.get(signer_for(parts.settings).url(stored.hash, "thumbnail.png"))
    assert answer.status_code == 200
    data = parts.store.read(stored.hash, "thumbnail.png")
    assert answer.data == data and answer.content_length == len(data)
    assert answer.content_type == "image/png"


# The store refusing writes -------------------------------------------------------------


def test_a_refused_manifest_leaves_a_preview_that_cannot_be_seen(
    object_store: ObjectStore,
) -> None:
    """Given the store refusing the manifest, the files written before it are never served.

    Then, the store accepting again, the same preview is stored whole.
    """
    store = s3_store(object_store)
    object_store.refuse("s3:PutObject", "*/manifest.json")
    with pytest.raises(StorageError, match="AccessDenied") as refused:
        store_preview(store, load_payload(FULL))
    assert not isinstance(refused.value, StoreUnreachable)
    assert not is_permanent(type(refused.value))  # the job is retried
    digest = store_preview(store, load_payload(FULL) | {"dryRun": True}).hash
    # The page and thumbnail were written: they are there, yet nothing shows them.
    written = [key for key in object_store.keys() if digest in key]
    assert sorted(key.rpartition("/")[2] for key in written) == [digest, "index.html",
                                                                 "thumbnail.png"]
    assert not store.exists(digest)
    for name in FILES:
        with pytest.raises(FileNotFoundError):
            store.read(digest, name)
        with pytest.raises(UnknownArtifact):
            open_artifact(store, digest, name)
    object_store.accept()
    again = store_preview(store, load_payload(FULL))
    assert not again.cached and store.exists(digest)
    assert object_store.keys() == set_keys(digest)


def test_a_store_refusing_every_write_leaves_nothing(object_store: ObjectStore) -> None:
    """Given the store refusing all writes, storing raises StorageError and writes nothing."""
    object_store.refuse("s3:PutObject")
    with pytest.raises(StorageError, match="refused to write"):
        store_preview(s3_store(object_store), load_payload(MINIMAL))
    assert object_store.keys() == []


def test_the_sweep_removes_only_abandoned_writes(object_store: ObjectStore) -> None:
    """Given an abandoned write and a complete preview, only the abandoned files go, when old."""
    store = s3_store(object_store)
    complete = store_preview(store, load_payload(MINIMAL)).hash
    object_store.refuse("s3:PutObject", "*/manifest.json")
    with pytest.raises(StorageError):
        store_preview(store, load_payload(FULL))
    object_store.accept()
    assert store.remove_abandoned(older_than=3600) == 0  # too fresh: its writer may be alive
    assert len(object_store.keys()) == 3 + 3  # the complete set; two files and the entry
    time.sleep(1.1)  # object times have whole seconds
    assert store.remove_abandoned(older_than=1) == 1
    assert object_store.keys() == set_keys(complete)


def test_a_writer_that_stops_after_its_manifest_leaves_a_preview(
    object_store: ObjectStore,
) -> None:
    """Given the pending entry cannot be deleted, the preview is stored; the sweep tidies."""
    store = s3_store(object_store)
    object_store.refuse("s3:DeleteObject", "previews/.unfinished/*")
    digest = store_preview(store, load_payload(MINIMAL)).hash
    assert store.exists(digest)
    assert f"previews/.unfinished/{digest}" in object_store.keys()
    object_store.accept()
    time.sleep(1.1)
    assert store.remove_abandoned(older_than=1) == 0  # nothing was abandoned
    assert object_store.keys() == set_keys(digest)


# The store unreachable -----------------------------------------------------------------


def test_a_closed_port_is_unreachable_within_seconds(object_store: ObjectStore) -> None:
    """Given an endpoint where nothing listens, every call raises StoreUnreachable quickly."""
    store = S3Store.from_url(object_store.url, f"http://127.0.0.1:{free_port()}")
    calls: list[Callable[[], object]] = [
        lambda: store.exists(A_KEY),
        lambda: store.read(A_KEY, "manifest.json"),
        lambda: store.put(A_KEY, {"manifest.json": b"{}"}),
        lambda: store.remove_abandoned(),
    ]
    for call in calls:
        started = time.monotonic()
        with pytest.raises(StoreUnreachable, match="cannot reach the artifact store") as caught:
            call()
        assert time.monotonic() - started < 5  # three attempts with their backoff
        assert isinstance(caught.value, StorageError) and not is_permanent(type(caught.value))


@pytest.fixture
def silent_port() -> Iterator[int]:
    """Give a loopback port that takes connections and never answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)  # connections wait in the backlog, never accepted
        yield listener.getsockname()[1]


def test_a_store_that_never_answers_is_unreachable_after_its_read_timeout(
    object_store: ObjectStore, silent_port: int
) -> None:
    """Given a server that takes the connection and never answers, the read timeout ends it."""
    store = S3Store.from_url(object_store.url, f"http://127.0.0.1:{silent_port}",
                             read_timeout=0.5, attempts=2)
    started = time.monotonic()
    with pytest.raises(StoreUnreachable):
        store.exists(A_KEY)
    assert 1.0 <= time.monotonic() - started < 4  # two attempts of half a second, and a pause


def test_the_check_is_one_head_of_the_bucket(object_store: ObjectStore) -> None:
    """Given the bucket, check() sends one HeadBucket; a bucket that is gone is refused."""
    store = s3_store(object_store)
    sent = requests_of(store)
    store.check()
    assert sent == ["HeadBucket"]
    gone = S3Store.from_url(f"s3://no-such-{object_store.bucket}/p", object_store.endpoint_url)
    with pytest.raises(StorageError, match="refused to look up the bucket") as refused:
        gone.check()
    assert not isinstance(refused.value, StoreUnreachable)
    cut = S3Store.from_url(object_store.url, f"http://127.0.0.1:{free_port()}")
    with pytest.raises(StoreUnreachable):
        cut.check()


def pretend_a_live_worker(connection: redis.Redis, settings: Settings) -> None:
    """Record a live worker of ours that holds every scheduler lock: health then rests on Redis
    and the store alone.
    """
    name = f"{keys.OUR_WORKER_PREFIX}elsewhere-1-0"
    register_worker(connection, name)
    connection.set(keys.worker_alive_key(name), 1, ex=300)
    for queue in queueing.queue_names(settings):
        connection.set(keys.scheduler_lock_key(queue), name, ex=300)


HEALTH = "/api/preview/worker/health"


def test_a_store_cut_off_answers_503_and_health_says_so_until_it_is_back(
    object_store: ObjectStore, make_app: AppMaker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given the network to the store cut, an artifact answers 503 store_unavailable with
    Retry-After and health answers 503 naming the store; restored, both answer 200 again.
    """
    monkeypatch.setattr(health, "STORE_FRESH", 1.0)
    link = Link(object_store.server.port).start()
    try:
        app = make_app(PREVIEW_STORE_URL=object_store.url, PREVIEW_S3_ENDPOINT_URL=link.url)
        parts = preview_of(app)
        stored = store_preview(parts.store, load_payload(MINIMAL))
        pretend_a_live_worker(parts.connection, parts.settings)
        client = app.test_client()
        page = parts.signer.url(stored.hash, "index.html")
        assert client.get(page).status_code == 200
        assert client.get(HEALTH).get_json()["store"]["ok"] is True

        link.cut()
        refused = client.get(page)
        assert refused.status_code == 503 and refused.headers["Retry-After"] == "5"
        assert refused.get_json()["error"] == "store_unavailable"
        assert "unreachable" in refused.get_json()["message"]
        # The store's last answer stands for a few seconds: the report turns within them.
        wait_until(lambda: client.get(HEALTH).status_code == 503, 10, "health to answer 503")
        report = client.get(HEALTH).get_json()
        assert report["redis"]["ok"] is True and report["workers"]["live"] == 1
        assert report["store"]["ok"] is False and report["store"]["url"] == object_store.url
        assert report["store"]["error"]
        assert [problem for problem in report["problems"] if "artifact store" in problem]
        assert len(report["problems"]) == 1

        link.start()
        wait_until(lambda: client.get(HEALTH).status_code == 200, 10, "health to answer 200")
        assert client.get(HEALTH).get_json()["problems"] == []
        served = client.get(page)
        assert served.status_code == 200 and served.data == parts.store.read(stored.hash,
                                                                              "index.html")
    finally:
        link.cut()


def test_health_asks_the_store_once_in_a_few_seconds(
    object_store: ObjectStore, redis_client: redis.Redis, settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Given reports in quick succession, one HeadBucket answers them all until it is stale."""
    settings = load_settings({"DATA_DIR": str(settings.data_dir), **object_store.environment()})
    store = store_for(settings)
    assert isinstance(store, S3Store)
    sent = requests_of(store)
    reports = [health.health_report(redis_client, settings) for _ in range(5)]
    assert sent == ["HeadBucket"] and all(report.store.ok for report in reports)
    monkeypatch.setattr(health, "STORE_FRESH", 0.0)
    assert health.health_report(redis_client, settings).store.ok
    assert sent == ["HeadBucket", "HeadBucket"]


def test_health_waits_for_a_silent_store_once_and_checks_it_on_one_thread(
    object_store: ObjectStore, redis_client: redis.Redis, silent_port: int, data_dir: Path
) -> None:
    """Given a store that takes connections and never answers, a report says so within
    STORE_TIMEOUT; the next ones answer at once, the one check still running.
    """
    settings = load_settings({"DATA_DIR": str(data_dir), "PREVIEW_STORE_URL": object_store.url,
                              "PREVIEW_S3_ENDPOINT_URL": f"http://127.0.0.1:{silent_port}"})
    started = time.monotonic()
    first = health.health_report(redis_client, settings)
    waited = time.monotonic() - started
    assert health.STORE_TIMEOUT <= waited < health.STORE_TIMEOUT + 2
    assert first.ok is False and first.store.ok is False
    assert str(first.store.error).startswith("the store has not answered for 2.")
    checking = [thread for thread in threading.enumerate() if thread.name == "store-check"]
    started = time.monotonic()
    again = [health.health_report(redis_client, settings) for _ in range(3)]
    assert time.monotonic() - started < 1.0  # no report waits for the store again
    assert all(not report.store.ok and "has not answered" in str(report.store.error)
               for report in again)
    still = [thread for thread in threading.enumerate() if thread.name == "store-check"]
    assert still == checking and checking, "no second check while the first one hangs"


# Settings and the choice of store ------------------------------------------------------


def test_store_for_picks_the_store_of_the_url(object_store: ObjectStore, data_dir: Path) -> None:
    """s3:// gives an S3Store (one per process), file:// a FileStore there, nothing DATA_DIR."""
    settings = load_settings({"DATA_DIR": str(data_dir), **object_store.environment()})
    store = store_for(settings)
    assert isinstance(store, S3Store) and store_for(settings) is store
    assert (store.bucket, store.prefix) == (object_store.bucket, "previews")
    assert store.client.meta.endpoint_url == object_store.endpoint_url
    on_disk = store_for(load_settings({"PREVIEW_STORE_URL": "file:///srv/preview%20data"}))
    assert isinstance(on_disk, FileStore) and on_disk.root == Path("/srv/preview data")
    default = store_for(load_settings({"DATA_DIR": str(data_dir)}))
    assert isinstance(default, FileStore) and default.root == data_dir


def test_the_store_settings_are_read() -> None:
    """Given both variables, each lands in its field; unset, the store is DATA_DIR's."""
    settings = load_settings({"PREVIEW_STORE_URL": "s3://my-previews/tutorials/v1/",
                              "PREVIEW_S3_ENDPOINT_URL": "https://minio.internal:9000/"})
    assert settings.store_url == "s3://my-previews/tutorials/v1/"
    assert settings.s3_endpoint_url == "https://minio.internal:9000"
    assert load_settings({}) == Settings() and Settings().store_url == ""
    assert load_settings({"PREVIEW_STORE_URL": "s3://bucket"}).store_url == "s3://bucket"


S3 = {"PREVIEW_STORE_URL": "s3://bucket/previews"}  # for the endpoint's rows


@pytest.mark.parametrize(
    ("variable", "value", "problem"),
    [
        ("PREVIEW_STORE_URL", "/srv/previews", "must be file:///path or s3://bucket/prefix"),
        ("PREVIEW_STORE_URL", "gs://bucket/previews", "must be file:///path"),
        ("PREVIEW_STORE_URL", "s3://bucket/previews?x=1", "must be file:///path"),
        ("PREVIEW_STORE_URL", "file://srv/previews", "absolute path"),
        ("PREVIEW_STORE_URL", "file:relative", "absolute path"),
        ("PREVIEW_STORE_URL", "s3://Bucket/previews", "must name a bucket"),
        ("PREVIEW_STORE_URL", "s3://ab", "must name a bucket"),
        ("PREVIEW_STORE_URL", "s3:///previews", "must name a bucket"),
        ("PREVIEW_STORE_URL", "s3://bucket/a//b", "has a prefix"),
        ("PREVIEW_STORE_URL", "s3://bucket/a/../b", "has a prefix"),
        ("PREVIEW_STORE_URL", "s3://bucket/a b", "has a prefix"),
        ("PREVIEW_S3_ENDPOINT_URL", "minio:9000", "must be like https://"),
        ("PREVIEW_S3_ENDPOINT_URL", "ftp://minio", "must be like https://"),
        ("PREVIEW_S3_ENDPOINT_URL", "http://minio:x", "bad port"),
    ],
)
def test_a_bad_store_setting_names_its_variable(variable: str, value: str, problem: str) -> None:
    """A bad store URL or endpoint stops start-up, naming the variable and the problem."""
    with pytest.raises(SettingsError, match=f"^{variable} .*{problem}"):
        load_settings({**S3, variable: value})


def test_an_endpoint_without_an_s3_store_is_refused() -> None:
    """An endpoint with a file store would be ignored: it stops start-up instead."""
    with pytest.raises(SettingsError, match="PREVIEW_STORE_URL is no s3://"):
        load_settings({"PREVIEW_S3_ENDPOINT_URL": "http://minio:9000"})


@pytest.mark.parametrize("variable", ["PREVIEW_STORE_URL", "PREVIEW_S3_ENDPOINT_URL"])
def test_a_secret_in_a_store_url_is_refused_and_never_shown(variable: str) -> None:
    """Credentials belong in AWS's settings: a URL holding one is refused, the secret hidden."""
    environment = {"PREVIEW_STORE_URL": "s3://bucket/previews",
                   variable: "https://key:s3cr3t@minio.internal/" if "ENDPOINT" in variable
                   else "s3://key:s3cr3t@bucket/previews"}
    with pytest.raises(SettingsError, match=variable) as caught:
        load_settings(environment)
    assert "s3cr3t" not in str(caught.value)
