"""A Redis Sentinel deployment of real processes on loopback: a primary, replicas, sentinels."""

from __future__ import annotations

from pathlib import Path
from types import TracebackType

import redis

from preview_worker.embedded_redis import EmbeddedRedis

from .processes import wait_until

SERVICE = "preview"  # the primary's name in the sentinels' configuration
QUORUM = 2  # sentinels that must agree the primary is down
DOWN_AFTER_MS = 1000  # silence after which a sentinel holds a server down
FAILOVER_TIMEOUT_MS = 5000  # a failover not done by then is tried again later
# Replicas log in to their primary as this user: disabling it on the primary cuts them off
# while clients and sentinels still reach it, as a network partition between them would.
REPLICATION_USER = "replicator"
REPLICATION_PASSWORD = "replication-pass-0123"


class Replica(EmbeddedRedis):
    """A persistent redis-server that replicates a primary from its start."""

    def __init__(self, data_dir: Path, primary_port: int) -> None:
        super().__init__(data_dir=data_dir, persistent=True)
        self.primary_port = primary_port

    def _command(self) -> list[str]:
        """Start as the primary's replica, logging in as the replication user."""
        return [
            *super()._command(),
            "--replicaof", "127.0.0.1", str(self.primary_port),
            "--masteruser", REPLICATION_USER, "--masterauth", REPLICATION_PASSWORD,
        ]


class Sentinel(EmbeddedRedis):
    """redis-server in Sentinel mode, watching one primary by the name SERVICE."""

    def __init__(self, data_dir: Path, primary_port: int) -> None:
        super().__init__(data_dir=data_dir)
        self.primary_port = primary_port

    def _command(self) -> list[str]:
        """Write the configuration Sentinel insists on owning (it rewrites it), then start."""
        config = self.data_dir / "sentinel.conf"
        config.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndaemonize no\ndir {self.data_dir}\n"
            f"sentinel monitor {SERVICE} 127.0.0.1 {self.primary_port} {QUORUM}\n"
            f"sentinel down-after-milliseconds {SERVICE} {DOWN_AFTER_MS}\n"
            f"sentinel failover-timeout {SERVICE} {FAILOVER_TIMEOUT_MS}\n"
            f"sentinel parallel-syncs {SERVICE} 1\n",
            "utf-8",
        )
        return [str(self.binary), str(config), "--sentinel"]


class SentinelDeployment:
    """A primary, replicas of it and three sentinels, each a process of its own."""

    def __init__(self, root: Path, replicas: int = 1, sentinels: int = 3) -> None:
        """Prepare the processes: each in a directory of its own under root."""
        self.primary = EmbeddedRedis(data_dir=root / "primary", persistent=True)
        self.root = root
        self.replica_count = replicas
        self.sentinel_count = sentinels
        self.replicas: list[Replica] = []
        self.sentinels: list[Sentinel] = []

    def __repr__(self) -> str:
        return f"SentinelDeployment(url={self.url!r})"

    @property
    def url(self) -> str:
        """The redis+sentinel:// URL that names every sentinel and the primary's name."""
        hosts = ",".join(f"127.0.0.1:{sentinel.port}" for sentinel in self.sentinels)
        return f"redis+sentinel://{hosts}/{SERVICE}/0"

    def start(self) -> SentinelDeployment:
        """Start the servers, then the sentinels; wait until the sentinels know every peer."""
        self.primary.start()
        replication_user(self.primary.port, enabled=True)
        for index in range(self.replica_count):
            replica = Replica(self.root / f"replica-{index}", self.primary.port)
            replica.start()
            # Any replica may be promoted; the others then log in to it.
            replication_user(replica.port, enabled=True)
            self.replicas.append(replica)
        for index in range(self.sentinel_count):
            sentinel = Sentinel(self.root / f"sentinel-{index}", self.primary.port)
            sentinel.start()
            self.sentinels.append(sentinel)
        wait_until(self.watching, 30, "the sentinels to know each other and every replica")
        return self

    def stop(self) -> None:
        """Stop every process that still runs, sentinels first (no failover on the way out)."""
        for server in [*self.sentinels, *self.replicas, self.primary]:
            server.stop()

    def __enter__(self) -> SentinelDeployment:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def master_state(self, sentinel: Sentinel) -> dict[str, object]:
        """Return what one sentinel says of the primary (an empty mapping if it cannot say)."""
        client = redis.Redis(port=sentinel.port, socket_timeout=1, socket_connect_timeout=1)
        try:
            state = client.sentinel_master(SERVICE)
            return state if isinstance(state, dict) else {}
        except redis.RedisError:
            return {}
        finally:
            client.close()

    def watching(self) -> bool:
        """Tell whether every sentinel sees the others and every replica, the primary up."""
        expected = (self.sentinel_count - 1, self.replica_count)
        for sentinel in self.sentinels:
            state = self.master_state(sentinel)
            seen = (state.get("num-other-sentinels"), state.get("num-slaves"))
            if seen != expected or not state.get("is_master") or state.get("is_sdown"):
                return False
        return True

    def primary_port(self) -> int | None:
        """Return the port every sentinel agrees is the primary's, or None while they differ."""
        ports = set()
        for sentinel in self.sentinels:
            client = redis.Redis(port=sentinel.port, socket_timeout=1, socket_connect_timeout=1)
            try:
                address = client.sentinel_get_master_addr_by_name(SERVICE)
            except redis.RedisError:
                return None
            finally:
                client.close()
            ports.add(int(address[1]) if isinstance(address, tuple | list) else None)
        return ports.pop() if len(ports) == 1 else None

    def promoted(self) -> Replica | None:
        """Return the replica every sentinel names the primary and that says it is, or None."""
        port = self.primary_port()
        for replica in self.replicas:
            if replica.port == port and role_of(replica.port) == "master":
                return replica
        return None

    def kill_primary(self) -> None:
        """SIGKILL the primary: no shutdown, no last write to disk or to a replica."""
        assert self.primary.process is not None
        self.primary.process.kill()
        self.primary.process.wait()
        self.primary.process = None

    def partition(self) -> None:
        """Cut every replica off the primary; clients and sentinels still reach them all."""
        replication_user(self.primary.port, enabled=False)


def role_of(port: int) -> str | None:
    """Return what a server on a loopback port says it is (master, slave), or None."""
    client = redis.Redis(port=port, socket_timeout=1, socket_connect_timeout=1)
    try:
        role = client.info("replication").get("role")
        return str(role) if role else None
    except redis.RedisError:
        return None
    finally:
        client.close()


def replication_user(port: int, enabled: bool) -> None:
    """Let replicas log in to a server, or shut them out and drop those logged in."""
    client = redis.Redis(port=port, socket_timeout=2)
    try:
        client.acl_setuser(
            REPLICATION_USER, enabled=enabled, passwords=[f"+{REPLICATION_PASSWORD}"],
            commands=["+@all"], keys=["*"], channels=["*"],
        )
        if not enabled:
            client.client_kill_filter(user=REPLICATION_USER)
    finally:
        client.close()
