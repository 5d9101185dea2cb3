"""Every setting of the service, read once from the environment into a frozen object."""

from __future__ import annotations

import functools
import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TypeVar
from urllib.parse import parse_qsl, unquote, urlsplit

T = TypeVar("T")

ENVIRONMENTS = ("development", "production")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
REDIS_SCHEMES = ("redis", "rediss", "unix", "redis+sentinel")
SENTINEL_SCHEME = "redis+sentinel"  # redis+sentinel://[[user]:password@]host[:port],.../name[/db]
SENTINEL_PORT = 26379  # Sentinel's own default port
# A primary's name as Sentinel monitors it (sentinel monitor <name> ...); no '/' or spaces.
SENTINEL_SERVICE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
# One sentinel of the URL: a name or IPv4 address, or an IPv6 one in brackets; a port or not.
SENTINEL_HOST = re.compile(
    r"^(?P<host>[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::(?P<port>[0-9]{1,5}))?$"
)
SENTINEL_OPTIONS = ("sentinel_password",)  # the query arguments a Sentinel URL may carry
REPLICA_TIMEOUT_MAX = 5_000  # ms; well under the sockets' 10 s timeout, which WAIT must not hit
# Also a prefix of job ids, so only the characters RQ allows in those.
QUEUE_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
URL_USERINFO = re.compile(
    r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*:/*)?(?P<userinfo>.*)@(?P<location>[^@]*)$", re.DOTALL
)
# An origin as browsers send it: scheme, host (a name or a bracketed IPv6), optional port.
ORIGIN_PATTERN = re.compile(r"^https?://([A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(:[0-9]{1,5})?$")
QUERY_PASSWORD = re.compile(r"([?&][a-z_]*password=)[^&#]*", re.IGNORECASE)


class SettingsError(ValueError):
    """A setting in the environment has a value the service cannot use."""


@dataclass(frozen=True, repr=False)
class Settings:
    """The service's knobs; field comments give the environment variable and unit."""

    redis_url: str | None = None  # REDIS_URL; None starts an embedded Redis in development
    data_dir: Path = Path("data")  # DATA_DIR; artifacts live under DATA_DIR/previews
    # PREVIEW_STORE_URL; the artifact store: file:///path (files under path/previews, as
    # DATA_DIR's) or s3://bucket/prefix (credentials from AWS's chain); empty: DATA_DIR
    store_url: str = ""
    s3_endpoint_url: str | None = None  # PREVIEW_S3_ENDPOINT_URL; an S3-compatible store's API
    queue_name: str = ""  # PREVIEW_QUEUE_NAME; prefixes the queues: <name>-high, ...
    worker_concurrency: int = 2  # PREVIEW_WORKER_CONCURRENCY; workers in one pool
    worker_max_jobs: int = 1000  # PREVIEW_WORKER_MAX_JOBS; jobs before a worker is replaced
    queue_max: int = 10_000  # PREVIEW_QUEUE_MAX; queued jobs before submissions get 503
    environment: str = "development"  # PREVIEW_ENV; development | production
    api_tokens: tuple[str, ...] = ()  # PREVIEW_API_TOKENS; comma-separated bearer tokens
    signing_key: str = ""  # PREVIEW_SIGNING_KEY; signs artifact URLs
    open_probes: bool = True  # PREVIEW_OPEN_PROBES; health and metrics answer without a token
    # PREVIEW_ALLOW_VOLATILE_REDIS; production starts on a Redis without AOF or RDB only if true
    allow_volatile_redis: bool = False
    # PREVIEW_ALLOWED_ORIGINS; comma-separated origins (https://ops.example.com) whose pages
    # may send the dashboard's writes; none: every dashboard write is refused
    allowed_origins: tuple[str, ...] = ()
    # PREVIEW_FRAME_ANCESTORS; who may show artifacts in a frame: 'none', 'self' or origins
    # separated by spaces (an editor's https://editor.example.com)
    frame_ancestors: str = "'none'"
    # PREVIEW_API_URL; scheme and host where clients reach the API: the command line's
    # artifact URLs start with it
    api_url: str = "http://127.0.0.1:8000"
    bind: str = "127.0.0.1:8000"  # PREVIEW_BIND; host:port `serve` and `run` listen on
    retry_max: int = 3  # PREVIEW_RETRY_MAX; retries after the first attempt
    retry_base_delay: float = 2.0  # PREVIEW_RETRY_BASE_DELAY; seconds before the first retry
    retry_max_delay: float = 300.0  # PREVIEW_RETRY_MAX_DELAY; seconds, cap of any retry gap
    job_timeout: int = 120  # PREVIEW_JOB_TIMEOUT; seconds one job may run, then it is killed
    render_timeout: float = 60.0  # PREVIEW_RENDER_TIMEOUT; seconds a render may take, then it fails
    highlight_timeout: float = 1.0  # PREVIEW_HIGHLIGHT_TIMEOUT; seconds per code block, then plain
    max_page_bytes: int = 16_777_216  # PREVIEW_MAX_PAGE_BYTES; largest HTML page a render makes
    result_ttl: int = 86_400  # PREVIEW_RESULT_TTL; seconds a finished job is kept
    failure_ttl: int = 604_800  # PREVIEW_FAILURE_TTL; seconds a dead letter is kept
    queued_ttl: int = 3_600  # PREVIEW_QUEUED_TTL; seconds a job may wait on its queue
    max_body_bytes: int = 1_048_576  # PREVIEW_MAX_BODY_BYTES; largest payload accepted
    batch_max: int = 1_000  # PREVIEW_BATCH_MAX; most payloads in one batch submit
    max_batch_bytes: int = 16_777_216  # PREVIEW_MAX_BATCH_BYTES; largest batch body accepted
    artifact_url_ttl: int = 3_600  # PREVIEW_ARTIFACT_URL_TTL; seconds a signed URL works
    # PREVIEW_RENDER_CACHE_MB; MiB each worker process keeps of earlier renders (thumbnails,
    # Markdown, highlighted code) for resubmitted edits; 0 turns the reuse off
    render_cache_mb: int = 64
    # PREVIEW_WEBHOOK_HOSTS; comma-separated host or host:port (IPv6 in brackets) that a
    # payload's notify.url may name (no port: the scheme's own); none: webhooks are off
    webhook_hosts: tuple[str, ...] = ()
    webhook_secret: str = ""  # PREVIEW_WEBHOOK_SECRET; signs webhook bodies (HMAC-SHA256)
    webhook_retry_max: int = 5  # PREVIEW_WEBHOOK_RETRY_MAX; retries of a failed delivery
    # PREVIEW_WEBHOOK_RETRY_BASE_DELAY; seconds before a delivery's first retry, doubled
    # each time up to an hour, jittered
    webhook_retry_base_delay: float = 30.0
    # PREVIEW_REPLICA_ACKS; replicas that must hold a submitted job before it is answered
    # (Redis WAIT, in the submit's own round trip); fewer in time: 503; 0: do not wait
    replica_acks: int = 0
    replica_timeout_ms: int = 500  # PREVIEW_REPLICA_TIMEOUT_MS; ms a submit waits for them
    log_level: str = "INFO"  # PREVIEW_LOG_LEVEL

    @property
    def production(self) -> bool:
        """Whether the service runs in production mode."""
        return self.environment == "production"

    @property
    def replica_wait(self) -> tuple[int, int]:
        """Return what a submit waits for: so many replicas' acknowledgement, so many ms."""
        return self.replica_acks, self.replica_timeout_ms

    def __repr__(self) -> str:
        """Show every setting but the secrets: tokens, keys as ***, the URL's password too."""
        shown = {item.name: getattr(self, item.name) for item in fields(self)}
        shown["redis_url"] = self.redis_url and redact_url(self.redis_url)
        shown["api_tokens"] = tuple("***" for _ in self.api_tokens)
        shown["signing_key"] = "***" if self.signing_key else ""
        shown["webhook_secret"] = "***" if self.webhook_secret else ""
        return f"Settings({', '.join(f'{name}={value!r}' for name, value in shown.items())})"


def _integer(name: str, raw: str, minimum: int) -> int:
    """Parse an integer setting no smaller than minimum."""
    try:
        value = int(raw.strip())
    except ValueError:
        raise SettingsError(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise SettingsError(f"{name} must be at least {minimum}, got {value}")
    return value


def _seconds(name: str, raw: str, minimum: float) -> float:
    """Parse a number of seconds no smaller than minimum."""
    try:
        value = float(raw.strip())
    except ValueError:
        raise SettingsError(f"{name} must be a number of seconds, got {raw!r}") from None
    if not value >= minimum or value == float("inf"):
        raise SettingsError(f"{name} must be a finite number of seconds >= {minimum}, got {raw!r}")
    return value


def _choice(name: str, raw: str, choices: tuple[str, ...]) -> str:
    """Parse a setting that must be one of a few words."""
    value = raw.strip()
    if value not in choices:
        raise SettingsError(f"{name} must be one of {', '.join(choices)}, got {raw!r}")
    return value


def _redis_url(name: str, raw: str) -> str:
    """Check that a Redis URL has a known scheme and a host or socket path, or sentinels."""
    value = raw.strip()
    parts = urlsplit(value)
    if parts.scheme not in REDIS_SCHEMES:
        raise SettingsError(
            f"{name} must be a URL starting with redis://, rediss://, unix:// or "
            f"redis+sentinel://, got {redact_url(value)!r}"
        )
    if parts.scheme == SENTINEL_SCHEME:
        try:
            parse_sentinel_url(value)
        except ValueError as error:
            raise SettingsError(f"{name} {error}: {redact_url(value)!r}") from None
        return value
    try:
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        raise SettingsError(f"{name} has a bad port: {redact_url(value)!r}") from None
    if parts.scheme == "unix" and not parts.path or parts.scheme != "unix" and not parts.hostname:
        raise SettingsError(f"{name} names no host or socket: {redact_url(value)!r}")
    return value


@dataclass(frozen=True, repr=False)
class SentinelURL:
    """A redis+sentinel:// URL taken apart: the sentinels, the primary's name, the login."""

    sentinels: tuple[tuple[str, int], ...]  # (host, port) of each sentinel, as listed
    service: str  # the primary's name in Sentinel's configuration
    db: int = 0
    username: str | None = None  # of the primary and its replicas (ACL), not of the sentinels
    password: str | None = None  # of the primary and its replicas
    sentinel_password: str | None = None  # of the sentinels themselves, if they ask for one

    def __repr__(self) -> str:
        """Show where the sentinels are and what they serve, never a password."""
        hosts = ",".join(
            f"[{host}]:{port}" if ":" in host else f"{host}:{port}" for host, port in self.sentinels
        )
        return f"SentinelURL({hosts}/{self.service}/{self.db})"


def parse_sentinel_url(url: str) -> SentinelURL:
    """Take a redis+sentinel:// URL apart, raising ValueError that says what is wrong.

    The form is rq-dashboard's (Redis-Sentinel-Url's):
    redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/name[/db]
    [?sentinel_password=...]; ports default to 26379, the database to 0.
    """
    rest = url.strip().removeprefix(f"{SENTINEL_SCHEME}://")
    # The user info runs to the last '@', as redact_url reads it: a password may hold '/'.
    userinfo, at, location = rest.rpartition("@")
    netloc = re.split(r"[/?#]", location, maxsplit=1)[0]
    parts = urlsplit(f"{SENTINEL_SCHEME}://host{location[len(netloc):]}")
    sentinels = []
    for item in netloc.split(","):
        found = SENTINEL_HOST.match(item.strip())
        port = int(found["port"]) if found and found["port"] else SENTINEL_PORT
        if not found or not 0 < port < 65536:
            raise ValueError("must list sentinels as host:port,host:port")
        sentinels.append((found["host"].strip("[]"), port))
    service, _, db = parts.path.removeprefix("/").partition("/")
    if not SENTINEL_SERVICE.match(service) or db and not re.fullmatch(r"[0-9]{1,5}", db):
        raise ValueError("must name the primary after the sentinels: /name or /name/db")
    query = parse_qsl(parts.query, keep_blank_values=True)
    unknown = sorted({key for key, _ in query} - set(SENTINEL_OPTIONS))
    if unknown or parts.fragment:
        raise ValueError(f"takes no option but {', '.join(SENTINEL_OPTIONS)}")
    user, colon, password = userinfo.partition(":")
    return SentinelURL(
        sentinels=tuple(sentinels),
        service=service,
        db=int(db or 0),
        username=unquote(user) or None if at else None,
        password=unquote(password) if at and colon else None,
        sentinel_password=dict(query).get("sentinel_password") or None,
    )


def _queue_name(name: str, raw: str) -> str:
    """Check a queue prefix: a short name of safe characters."""
    value = raw.strip()
    if not QUEUE_NAME_PATTERN.match(value):
        raise SettingsError(
            f"{name} must be 1-64 letters, digits, '_' or '-', got {raw!r}"
        )
    return value


def _flag(name: str, raw: str) -> bool:
    """Parse a yes/no setting."""
    value = raw.strip().lower()
    if value not in ("true", "false", "1", "0", "yes", "no"):
        raise SettingsError(f"{name} must be true or false, got {raw!r}")
    return value in ("true", "1", "yes")


def _tokens(name: str, raw: str) -> tuple[str, ...]:
    """Split a comma-separated token list, refusing tokens too short to be secret."""
    tokens = tuple(token.strip() for token in raw.split(",") if token.strip())
    if any(len(token) < 16 for token in tokens):
        raise SettingsError(f"{name} holds a token shorter than 16 characters")
    return tokens


def _origins(name: str, raw: str) -> tuple[str, ...]:
    """Split a comma-separated list of origins: scheme://host[:port], nothing after."""
    origins = tuple(origin.strip().rstrip("/") for origin in raw.split(",") if origin.strip())
    for origin in origins:
        if not ORIGIN_PATTERN.match(origin):
            raise SettingsError(
                f"{name} holds {origin!r}, not an origin like https://ops.example.com"
            )
    return origins


def _bind(name: str, raw: str) -> str:
    """Check a listening address: host:port, the host a name, an IPv4 or a bracketed IPv6."""
    value = raw.strip()
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise SettingsError(f"{name} must be host:port, like 127.0.0.1:8000, got {raw!r}")
    return value


def _api_url(name: str, raw: str) -> str:
    """Check the API's public origin: scheme and host, and a port if any."""
    value = raw.strip().rstrip("/")
    if not ORIGIN_PATTERN.match(value):
        raise SettingsError(f"{name} must be like https://previews.example.com, got {raw!r}")
    return value


def _frame_ancestors(name: str, raw: str) -> str:
    """Check a CSP frame-ancestors source list: 'none' alone, or 'self' and origins."""
    sources = raw.split()
    if sources == ["'none'"]:
        return "'none'"
    for source in sources:
        if source != "'self'" and not ORIGIN_PATTERN.match(source.rstrip("/")):
            raise SettingsError(
                f"{name} holds {source!r}: give 'none', or 'self' and origins like "
                "https://editor.example.com, separated by spaces"
            )
    return " ".join(source.rstrip("/") for source in sources)


# One entry of PREVIEW_WEBHOOK_HOSTS, lowercased: a host name, an IPv4 address or a bracketed
# IPv6 address, and an optional port.
WEBHOOK_HOST = re.compile(
    r"^(?P<host>[a-z0-9](?:[a-z0-9.-]{0,251}[a-z0-9])?|\[[0-9a-f:.]+\])(?::(?P<port>[0-9]{1,5}))?$"
)


def _webhook_hosts(name: str, raw: str) -> tuple[str, ...]:
    """Split the webhook hosts: host or host:port each, IPv6 in brackets, written in one way."""
    entries = []
    for item in raw.split(","):
        entry = item.strip().lower()
        if not entry:
            continue
        found = WEBHOOK_HOST.match(entry)
        port = found and found["port"]
        if not found or port and not 0 < int(port) < 65536:
            raise SettingsError(
                f"{name} holds {item.strip()!r}, not host or host:port (hooks.example.com, "
                "127.0.0.1:8123, [::1]:8123)"
            )
        host = found["host"]
        if host.startswith("["):
            try:
                host = f"[{ipaddress.IPv6Address(host[1:-1]).compressed}]"
            except ValueError:
                raise SettingsError(f"{name} holds {item.strip()!r}: no IPv6 address") from None
        entries.append(f"{host}:{int(port)}" if port else host)
    return tuple(entries)


def _secret(name: str, raw: str) -> str:
    """Read a secret key, refusing one too short to be secret."""
    value = raw.strip()
    if len(value) < 16:
        raise SettingsError(f"{name} must be at least 16 characters long")
    return value


S3_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")  # S3's rules for bucket names
S3_PREFIX_PART = re.compile(r"^[A-Za-z0-9_.-]+$")  # one segment of a key prefix


def _store_url(name: str, raw: str) -> str:
    """Check an artifact store URL: file:///absolute/path or s3://bucket/prefix."""
    value = raw.strip()
    parts = urlsplit(value)
    shown = redact_url(value)
    if parts.scheme not in ("file", "s3") or parts.query or parts.fragment:
        raise SettingsError(f"{name} must be file:///path or s3://bucket/prefix, got {shown!r}")
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise SettingsError(
                f"{name} must name an absolute path (file:///srv/data), got {shown!r}"
            )
        return value
    if not S3_BUCKET.match(parts.netloc) or ".." in parts.netloc:
        raise SettingsError(
            f"{name} must name a bucket of 3-63 lowercase letters, digits, '.' or '-' "
            f"(s3://bucket/prefix), got {shown!r}"
        )
    prefix = parts.path.strip("/")
    segments = prefix.split("/") if prefix else []  # an empty one, from "//", is refused
    if any(not S3_PREFIX_PART.match(segment) or segment in (".", "..") for segment in segments):
        raise SettingsError(
            f"{name} has a prefix that is not segments of letters, digits, '_', '.' or '-' "
            f"separated by '/', got {shown!r}"
        )
    return value


def _s3_endpoint_url(name: str, raw: str, store_url: str) -> str:
    """Check an S3-compatible store's API URL, http(s)://host[:port], given an s3:// store."""
    value = raw.strip().rstrip("/")
    parts = urlsplit(value)
    shown = redact_url(value)
    try:
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        raise SettingsError(f"{name} has a bad port: {shown!r}") from None
    userinfo = parts.username is not None or parts.password is not None
    if parts.scheme not in ("http", "https") or not parts.hostname or userinfo or parts.query:
        raise SettingsError(
            f"{name} must be like https://minio.internal:9000 (credentials come from the AWS "
            f"settings, never the URL), got {shown!r}"
        )
    if not store_url.startswith("s3://"):
        raise SettingsError(f"{name} is set, but PREVIEW_STORE_URL is no s3:// URL")
    return value


def redact_url(url: str) -> str:
    """Return a URL with any password replaced, safe for logs and health reports."""
    # The user info runs to the last '@', past any '/', '?' or '#' that a password holds
    # unencoded (base64 passwords often hold '/'), which would make urlsplit miss it.
    match = URL_USERINFO.match(url)
    if match:
        user, colon, _password = match["userinfo"].partition(":")
        shown = f"{user}:***" if colon else "***"  # no ':': maybe a bare password, hide it all
        url = f"{match['scheme'] or ''}{shown}@{match['location']}"
    # redis-py also takes passwords as query arguments: ?password=..., ?ssl_password=...
    return QUERY_PASSWORD.sub(r"\1***", url)


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Read the settings from an environment, raising SettingsError naming a bad variable."""
    env = os.environ if environ is None else environ
    defaults = Settings()

    def read(name: str, parse: Callable[[str, str], T], default: T) -> T:
        raw = env.get(name)
        if raw is None or raw.strip() == "":
            return default
        return parse(name, raw)

    def whole(minimum: int) -> Callable[[str, str], int]:
        return lambda name, raw: _integer(name, raw, minimum)

    def seconds(minimum: float) -> Callable[[str, str], float]:
        return lambda name, raw: _seconds(name, raw, minimum)

    def one_of(choices: tuple[str, ...]) -> Callable[[str, str], str]:
        # Log levels are case-blind, as the logging module's own names are.
        fold = str.upper if choices is LOG_LEVELS else str.strip
        return lambda name, raw: _choice(name, fold(raw), choices)

    store_url = read("PREVIEW_STORE_URL", _store_url, defaults.store_url)
    settings = Settings(
        redis_url=read("REDIS_URL", _redis_url, defaults.redis_url),
        data_dir=read("DATA_DIR", lambda _name, raw: Path(raw.strip()), defaults.data_dir),
        store_url=store_url,
        s3_endpoint_url=read(
            "PREVIEW_S3_ENDPOINT_URL",
            lambda name, raw: _s3_endpoint_url(name, raw, store_url),
            defaults.s3_endpoint_url,
        ),
        queue_name=read("PREVIEW_QUEUE_NAME", _queue_name, defaults.queue_name),
        worker_concurrency=read(
            "PREVIEW_WORKER_CONCURRENCY", whole(1), defaults.worker_concurrency
        ),
        worker_max_jobs=read("PREVIEW_WORKER_MAX_JOBS", whole(1), defaults.worker_max_jobs),
        queue_max=read("PREVIEW_QUEUE_MAX", whole(1), defaults.queue_max),
        environment=read("PREVIEW_ENV", one_of(ENVIRONMENTS), defaults.environment),
        api_tokens=read("PREVIEW_API_TOKENS", _tokens, defaults.api_tokens),
        open_probes=read("PREVIEW_OPEN_PROBES", _flag, defaults.open_probes),
        allow_volatile_redis=read(
            "PREVIEW_ALLOW_VOLATILE_REDIS", _flag, defaults.allow_volatile_redis
        ),
        allowed_origins=read("PREVIEW_ALLOWED_ORIGINS", _origins, defaults.allowed_origins),
        frame_ancestors=read("PREVIEW_FRAME_ANCESTORS", _frame_ancestors, defaults.frame_ancestors),
        api_url=read("PREVIEW_API_URL", _api_url, defaults.api_url),
        bind=read("PREVIEW_BIND", _bind, defaults.bind),
        signing_key=read(
            "PREVIEW_SIGNING_KEY", lambda _name, raw: raw.strip(), defaults.signing_key
        ),
        retry_max=read("PREVIEW_RETRY_MAX", whole(0), defaults.retry_max),
        retry_base_delay=read("PREVIEW_RETRY_BASE_DELAY", seconds(0), defaults.retry_base_delay),
        retry_max_delay=read("PREVIEW_RETRY_MAX_DELAY", seconds(0), defaults.retry_max_delay),
        job_timeout=read("PREVIEW_JOB_TIMEOUT", whole(1), defaults.job_timeout),
        render_timeout=read("PREVIEW_RENDER_TIMEOUT", seconds(0.1), defaults.render_timeout),
        highlight_timeout=read(
            "PREVIEW_HIGHLIGHT_TIMEOUT", seconds(0.01), defaults.highlight_timeout
        ),
        max_page_bytes=read("PREVIEW_MAX_PAGE_BYTES", whole(65_536), defaults.max_page_bytes),
        result_ttl=read("PREVIEW_RESULT_TTL", whole(1), defaults.result_ttl),
        failure_ttl=read("PREVIEW_FAILURE_TTL", whole(1), defaults.failure_ttl),
        queued_ttl=read("PREVIEW_QUEUED_TTL", whole(1), defaults.queued_ttl),
        max_body_bytes=read("PREVIEW_MAX_BODY_BYTES", whole(1024), defaults.max_body_bytes),
        batch_max=read("PREVIEW_BATCH_MAX", whole(1), defaults.batch_max),
        max_batch_bytes=read("PREVIEW_MAX_BATCH_BYTES", whole(1024), defaults.max_batch_bytes),
        render_cache_mb=read("PREVIEW_RENDER_CACHE_MB", whole(0), defaults.render_cache_mb),
        artifact_url_ttl=read("PREVIEW_ARTIFACT_URL_TTL", whole(1), defaults.artifact_url_ttl),
        webhook_hosts=read("PREVIEW_WEBHOOK_HOSTS", _webhook_hosts, defaults.webhook_hosts),
        webhook_secret=read("PREVIEW_WEBHOOK_SECRET", _secret, defaults.webhook_secret),
        webhook_retry_max=read("PREVIEW_WEBHOOK_RETRY_MAX", whole(0), defaults.webhook_retry_max),
        webhook_retry_base_delay=read(
            "PREVIEW_WEBHOOK_RETRY_BASE_DELAY", seconds(0), defaults.webhook_retry_base_delay
        ),
        replica_acks=read("PREVIEW_REPLICA_ACKS", whole(0), defaults.replica_acks),
        replica_timeout_ms=read(
            "PREVIEW_REPLICA_TIMEOUT_MS", whole(1), defaults.replica_timeout_ms
        ),
        log_level=read("PREVIEW_LOG_LEVEL", one_of(LOG_LEVELS), defaults.log_level),
    )
    if settings.replica_timeout_ms > REPLICA_TIMEOUT_MAX:
        raise SettingsError(
            f"PREVIEW_REPLICA_TIMEOUT_MS must be at most {REPLICA_TIMEOUT_MAX}, "
            f"got {settings.replica_timeout_ms}"
        )
    if settings.production and settings.webhook_hosts and not settings.webhook_secret:
        raise SettingsError(
            "PREVIEW_WEBHOOK_SECRET must be set in production while PREVIEW_WEBHOOK_HOSTS is: "
            "it signs every webhook"
        )
    return settings


def load_body_limit(environ: Mapping[str, str] | None = None) -> Settings:
    """Read only what offline validation needs, the body limit; the rest keep their defaults."""
    env = os.environ if environ is None else environ
    raw = env.get("PREVIEW_MAX_BODY_BYTES", "")
    if not raw.strip():
        return Settings()
    return Settings(max_body_bytes=_integer("PREVIEW_MAX_BODY_BYTES", raw, 1024))


@functools.lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Return the process's settings, read from the environment on first use."""
    return load_settings()
