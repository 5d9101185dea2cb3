"""A real S3 API for the tests: moto's server on a free loopback port, refusing on request.

The server checks every request's signature against the access key of one IAM user, and
its IAM policies: a test makes the store refuse writes by giving that user a Deny policy,
so refusals come from the server exactly as S3 sends them, never from a mocked client.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import json
import socket
import socketserver
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import boto3
import pytest

from preview_worker.embedded_redis import free_port

if TYPE_CHECKING:
    from mypy_boto3_iam import IAMClient
    from mypy_boto3_s3 import S3Client

START_TIMEOUT = 30.0  # seconds for moto_server to answer; its imports take a second or two
STOP_TIMEOUT = 10.0  # seconds for it to exit after SIGTERM
REGION = "us-east-1"
USER = "preview-writer"  # the IAM user whose keys the store under test signs with
REFUSAL = "refusal"  # the name of the user's Deny policy while a test refuses
ALLOW_ALL = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*",
                                                      "Resource": "*"}]}


class ObjectStoreUnavailable(RuntimeError):
    """moto_server could not be started."""


class MotoServer:
    """A moto_server child process on 127.0.0.1, its requests signed with one user's keys."""

    def __init__(self) -> None:
        """Prepare a server on a free port; start() runs it."""
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.access_key = self.secret_key = ""

    @property
    def endpoint_url(self) -> str:
        """The http:// URL of the server's S3 (and IAM) API."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> MotoServer:
        """Start the server, make the writer's keys, then have it check every request."""
        # A missing moto fails the tests that need it, never skips them (CI must run them).
        if importlib.util.find_spec("moto.server") is None:
            raise ObjectStoreUnavailable("moto is not installed: pip install -e '.[dev]'")
        for _attempt in range(3):  # another process may take the free port first
            self.port = free_port()
            self.process = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
            if self._wait_until_ready():
                break
            self.stop()
        else:
            raise ObjectStoreUnavailable("moto_server did not start; tried three free ports")
        # Until authentication is switched on, moto takes any key: make the writer's.
        iam = self._iam("setup", "setup")
        iam.create_user(UserName=USER)
        iam.put_user_policy(UserName=USER, PolicyName="all",
                            PolicyDocument=json.dumps(ALLOW_ALL))
        key = iam.create_access_key(UserName=USER)["AccessKey"]
        self.access_key, self.secret_key = key["AccessKeyId"], key["SecretAccessKey"]
        self._post("/moto-api/reset-auth", b"0")  # from now on: signed by a known key, allowed
        return self

    def _wait_until_ready(self) -> bool:
        """Return True once the server answers, False if it exited or timed out."""
        assert self.process is not None
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                with urllib.request.urlopen(f"{self.endpoint_url}/moto-api/data.json", timeout=1):
                    return True
            except (urllib.error.URLError, OSError):
                time.sleep(0.05)
        return False

    def _post(self, path: str, body: bytes) -> None:
        """POST to moto's own control API."""
        request = urllib.request.Request(self.endpoint_url + path, data=body, method="POST",
                                         headers={"Content-Type": "text/plain"})
        with urllib.request.urlopen(request, timeout=10):
            pass

    @functools.cached_property
    def s3(self) -> S3Client:
        """A client of the server's S3, signed with the writer's keys (made once: slow)."""
        client: S3Client = boto3.session.Session().client(
            "s3", endpoint_url=self.endpoint_url, region_name=REGION,
            aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key,
        )
        return client

    @functools.cached_property
    def iam(self) -> IAMClient:
        """A client of the server's IAM, signed with the writer's keys (made once: slow)."""
        return self._iam(self.access_key, self.secret_key)

    def _iam(self, access_key: str, secret_key: str) -> IAMClient:
        """Return a client of the server's IAM signed with these keys."""
        client: IAMClient = boto3.session.Session().client(
            "iam", endpoint_url=self.endpoint_url, region_name=REGION,
            aws_access_key_id=access_key, aws_secret_access_key=secret_key,
        )
        return client

    def stop(self) -> None:
        """Stop the server and wait for it to exit."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def __enter__(self) -> MotoServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


@dataclass
class ObjectStore:
    """One test's bucket on the moto server, and the settings that point the service at it."""

    server: MotoServer
    bucket: str
    prefix: str = "previews"

    @property
    def url(self) -> str:
        """PREVIEW_STORE_URL of the bucket."""
        return f"s3://{self.bucket}/{self.prefix}"

    @property
    def endpoint_url(self) -> str:
        """PREVIEW_S3_ENDPOINT_URL of the server."""
        return self.server.endpoint_url

    def environment(self) -> dict[str, str]:
        """Return the service's settings for this store."""
        return {"PREVIEW_STORE_URL": self.url, "PREVIEW_S3_ENDPOINT_URL": self.endpoint_url}

    def keys(self) -> list[str]:
        """Return the key of every object in the bucket, sorted."""
        listed = self.server.s3.list_objects_v2(Bucket=self.bucket)
        return sorted(item["Key"] for item in listed.get("Contents", []) if "Key" in item)

    def refuse(self, action: str, objects: str = "*") -> None:
        """Make the server deny an S3 action (s3:PutObject) on the bucket's objects that match."""
        resource = f"arn:aws:s3:::{self.bucket}/{objects}"
        statement: dict[str, Any] = {"Effect": "Deny", "Action": action, "Resource": resource}
        self.server.iam.put_user_policy(
            UserName=USER, PolicyName=REFUSAL,
            PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [statement]}),
        )

    def accept(self) -> None:
        """Take back any refusal."""
        iam = self.server.iam
        if REFUSAL in iam.list_user_policies(UserName=USER)["PolicyNames"]:
            iam.delete_user_policy(UserName=USER, PolicyName=REFUSAL)


class Relay(socketserver.BaseRequestHandler):
    """One connection through a Link: bytes both ways until either side closes."""

    server: LinkServer

    def handle(self) -> None:
        """Connect to the target, then copy each side's bytes to the other."""
        try:
            upstream = socket.create_connection(self.server.target, timeout=5)
        except OSError:
            return
        upstream.settimeout(None)
        with upstream, self.server.held(self.request), self.server.held(upstream):
            copier = threading.Thread(target=copy, args=(upstream, self.request), daemon=True)
            copier.start()
            copy(self.request, upstream)
            copier.join()


def copy(source: socket.socket, target: socket.socket) -> None:
    """Copy bytes from one socket to another until either closes; then close both ways."""
    try:
        while data := source.recv(65_536):
            target.sendall(data)
    except OSError:
        pass
    for side in (source, target):
        with contextlib.suppress(OSError):
            side.shutdown(socket.SHUT_RDWR)


class LinkServer(socketserver.ThreadingTCPServer):
    """The listening side of a Link, which remembers its open connections to cut them."""

    daemon_threads = True
    allow_reuse_address = True  # restored on the same port at once

    def __init__(self, port: int, target: tuple[str, int]) -> None:
        """Listen on a loopback port; relay every connection to target."""
        super().__init__(("127.0.0.1", port), Relay)
        self.target = target
        self.open: set[socket.socket] = set()
        self.open_lock = threading.Lock()

    @contextlib.contextmanager
    def held(self, connection: socket.socket) -> Iterator[None]:
        """Remember a connection while it is relayed."""
        with self.open_lock:
            self.open.add(connection)
        try:
            yield
        finally:
            with self.open_lock:
                self.open.discard(connection)

    def cut(self) -> None:
        """Stop listening and break every relayed connection."""
        self.shutdown()
        self.server_close()
        with self.open_lock:
            for connection in self.open:
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)


class Link:
    """A TCP relay on loopback to a server, cut and restored on demand: a network outage.

    While cut, nothing listens on its port (connections are refused) and the connections
    it carried are broken; restored, it listens on the same port again.
    """

    def __init__(self, target_port: int) -> None:
        """Prepare a relay to a loopback port; start() opens it."""
        self.target = ("127.0.0.1", target_port)
        self.port = free_port()
        self.server: LinkServer | None = None

    @property
    def url(self) -> str:
        """The http:// URL of the relay."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Link:
        """Listen and relay (again, after a cut)."""
        self.server = LinkServer(self.port, self.target)
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def cut(self) -> None:
        """Refuse new connections and break the open ones."""
        if self.server is not None:
            self.server.cut()
            self.server = None


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    """Give a moto_server of the whole session on a free loopback port."""
    with MotoServer() as server:
        yield server


@pytest.fixture
def object_store(
    moto_server: MotoServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Iterator[ObjectStore]:
    """Give a new empty bucket, with AWS's standard variables holding the writer's keys.

    The developer's own AWS settings (profiles, files, endpoints) are kept out of the test.
    """
    for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN",
                 "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", moto_server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", moto_server.secret_key)
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    store = ObjectStore(moto_server, f"previews-{uuid.uuid4().hex[:16]}")
    moto_server.s3.create_bucket(Bucket=store.bucket)
    yield store
    store.accept()
