"""Redis Sentinel: the URL, waiting for replicas, and failovers of real processes on loopback."""

from __future__ import annotations

import asyncio
import signal
import statistics
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
import redis.sentinel
from rq.worker import BaseWorker

from preview_worker import keys, queueing
from preview_worker.connections import (
    ReplicasBehind,
    connect,
    connect_async,
    is_refusal,
    pipelined,
)
from preview_worker.settings import SettingsError, load_settings, parse_sentinel_url, redact_url

from .conftest import API_TOKEN, AppMaker, payload, service_environment
from .processes import serving, wait_until
from .sentinels import SentinelDeployment, role_of
from .test_chaos import TOKEN, Report, distinct_payload, final_states, post, workers

URL = "redis+sentinel://:s3cret%2Fpass@10.0.0.1:26379,10.0.0.2,[::1]:26380/preview/2"

# --- the URL ---------------------------------------------------------------------------------


def test_a_sentinel_url_names_every_sentinel_the_primary_and_the_login() -> None:
    """Given the documented form, each part lands where connect() takes it; ports default."""
    address = parse_sentinel_url(URL + "?sentinel_password=sentinel-pass")
    assert address.sentinels == (("10.0.0.1", 26379), ("10.0.0.2", 26379), ("::1", 26380))
    assert (address.service, address.db) == ("preview", 2)
    assert (address.username, address.password) == (None, "s3cret/pass")
    assert address.sentinel_password == "sentinel-pass"
    assert "s3cret" not in repr(address) and "sentinel-pass" not in repr(address)
    assert load_settings({"REDIS_URL": URL}).redis_url == URL
    assert parse_sentinel_url("redis+sentinel://s1/preview").db == 0


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        ("redis+sentinel://:pw-0f3a@/preview", "must list sentinels"),
        ("redis+sentinel://:pw-0f3a@s1:26379,/preview", "must list sentinels"),
        ("redis+sentinel://:pw-0f3a@s1:notaport/preview", "must list sentinels"),
        ("redis+sentinel://:pw-0f3a@s1:70000/preview", "must list sentinels"),
        ("redis+sentinel://:pw-0f3a@s1:26379", "must name the primary"),
        ("redis+sentinel://:pw-0f3a@s1:26379/", "must name the primary"),
        ("redis+sentinel://:pw-0f3a@s1:26379/preview/db", "must name the primary"),
        ("redis+sentinel://:pw-0f3a@s1:26379/preview/0/extra", "must name the primary"),
        ("redis+sentinel://:pw-0f3a@s1:26379/preview?ssl=true", "takes no option"),
    ],
)
def test_a_bad_sentinel_url_is_refused_without_its_password(url: str, complaint: str) -> None:
    """Given a sentinel URL that cannot work, start-up stops naming REDIS_URL, not the password."""
    with pytest.raises(SettingsError, match=f"^REDIS_URL {complaint}") as raised:
        load_settings({"REDIS_URL": url})
    assert "pw-0f3a" not in str(raised.value)


def test_a_sentinel_url_is_shown_without_its_passwords() -> None:
    """The primary's and the sentinels' passwords are masked wherever the URL is shown."""
    shown = redact_url(URL + "?sentinel_password=sentinel-pass")
    assert shown == (
        "redis+sentinel://:***@10.0.0.1:26379,10.0.0.2,[::1]:26380/preview/2"
        "?sentinel_password=***"
    )
    assert "s3cret" not in repr(load_settings({"REDIS_URL": URL}))


def test_connect_gives_a_client_of_the_primary_with_the_usual_timeouts() -> None:
    """connect() on a sentinel URL asks the sentinels for the primary, with connect()'s limits."""
    connection = connect(URL)
    pool = connection.connection_pool
    assert isinstance(pool, redis.sentinel.SentinelConnectionPool)
    assert pool.service_name == "preview"
    asked = [each.connection_pool.connection_kwargs for each in pool.sentinel_manager.sentinels]
    assert [(kwargs["host"], kwargs["port"]) for kwargs in asked] == [
        ("10.0.0.1", 26379), ("10.0.0.2", 26379), ("::1", 26380)
    ]
    assert all(kwargs["socket_timeout"] == 1 for kwargs in asked)  # a sentinel answers at once
    options = pool.connection_kwargs
    assert (options["socket_connect_timeout"], options["socket_timeout"]) == (2, 10)
    assert (options["db"], options["password"]) == (2, "s3cret/pass")
    assert options["retry"].get_retries() == 2
    connection.close()


@pytest.mark.parametrize(
    ("name", "value"),
    [("PREVIEW_REPLICA_ACKS", "-1"), ("PREVIEW_REPLICA_ACKS", "one"),
     ("PREVIEW_REPLICA_TIMEOUT_MS", "0"), ("PREVIEW_REPLICA_TIMEOUT_MS", "60000")],
)
def test_a_bad_replica_wait_is_refused(name: str, value: str) -> None:
    """The acknowledgements are a count; the wait is 1 ms to 5 s, under the socket timeout."""
    with pytest.raises(SettingsError, match=f"^{name} "):
        load_settings({name: value})


# --- waiting for replicas, on the tests' lone Redis ------------------------------------------


def test_a_submit_no_replica_acknowledged_is_answered_503_and_safe_to_send_again(
    make_app: AppMaker, redis_client: redis.Redis
) -> None:
    """Given PREVIEW_REPLICA_ACKS=1 and no replica, a submit is written but answered 503 with
    Retry-After; sent again, it is the same job, still 503; without the setting, 200."""
    waiting = make_app(
        PREVIEW_API_TOKENS=API_TOKEN, PREVIEW_REPLICA_ACKS="1", PREVIEW_REPLICA_TIMEOUT_MS="5"
    ).test_client()
    headers = {"Authorization": f"Bearer {API_TOKEN}"}
    sent = payload()
    first = waiting.post("/api/preview/job", json=sent, headers=headers)
    assert first.status_code == 503 and first.headers["Retry-After"]
    assert first.json is not None and first.json["error"] == "unavailable"
    job_id = queueing.job_id_for(sent)
    assert redis_client.exists(keys.job_key(job_id))  # written on the primary, not yet safe
    assert waiting.post("/api/preview/job", json=sent, headers=headers).status_code == 503
    assert redis_client.llen(keys.queue_key("normal")) == 1  # one job, however often sent
    plain = make_app(PREVIEW_API_TOKENS=API_TOKEN).test_client()
    again = plain.post("/api/preview/job", json=sent, headers=headers)
    assert again.status_code == 200 and again.json is not None and again.json["duplicate"]


def test_a_batch_no_replica_acknowledged_is_answered_503(make_app: AppMaker) -> None:
    """Given PREVIEW_REPLICA_ACKS=1 and no replica, a batch waits once, then answers 503."""
    waiting = make_app(
        PREVIEW_API_TOKENS=API_TOKEN, PREVIEW_REPLICA_ACKS="1", PREVIEW_REPLICA_TIMEOUT_MS="5"
    ).test_client()
    answer = waiting.post(
        "/api/preview/jobs", json={"jobs": [distinct_payload(1), distinct_payload(2)]},
        headers={"Authorization": f"Bearer {API_TOKEN}"},
    )
    assert answer.status_code == 503 and answer.headers["Retry-After"]


# --- real processes --------------------------------------------------------------------------

SUBMIT_GAP = 0.02  # seconds between an editor's accepted submits
# Seconds before a refused submit goes again; shorter than the Retry-After the API sends,
# so that the moment the API accepts again is timed finely.
RETRY_GAP = 0.1
WARM_UP = 2.0  # seconds of submits before the fault
PARTITION_FOR = 0.5  # seconds the replicas are cut off before the primary dies
AFTER = 2.0  # seconds of submits once the API accepts again
RECOVERY_LIMIT = 20.0  # seconds within which the sentinels promote and the API accepts again
END_LIMIT = 60.0  # seconds within which every job still in Redis must end
REPLICA_WAIT_MS = "200"  # the tests' PREVIEW_REPLICA_TIMEOUT_MS


@pytest.fixture
def report(capsys: pytest.CaptureFixture[str]) -> Report:
    """Give a printer of failover figures that reaches the terminal, so CI's log keeps them."""

    def say(line: str) -> None:
        """Print one line past pytest's capture."""
        with capsys.disabled():
            print(f"\n  sentinel: {line}")

    return say


@dataclass(frozen=True)
class Answer:
    """One submit as the editor saw it."""

    number: int  # which payload
    sent: float  # monotonic seconds
    answered: float
    code: int  # 0: no HTTP answer at all
    job_id: str | None


class Editor(threading.Thread):
    """Submits distinct payloads one after another, sending each again until it is accepted,
    as an editor's client does on 503."""

    def __init__(self, base: str) -> None:
        super().__init__(daemon=True)
        self.base = base
        self.answers: list[Answer] = []
        self.done = threading.Event()

    def run(self) -> None:
        """Submit until told to stop."""
        number = 0
        while not self.done.is_set():
            sent = time.monotonic()
            try:
                code, body, _ = post(self.base, distinct_payload(number))
            except OSError:
                code, body = 0, {}
            self.answers.append(Answer(number, sent, time.monotonic(), code, body.get("jobId")))
            accepted = code in (200, 202)
            number += accepted
            time.sleep(SUBMIT_GAP if accepted else RETRY_GAP)

    def stop(self) -> None:
        """Stop after the submit in flight."""
        self.done.set()
        self.join(30)

    def accepted(self, since: float = 0.0, until: float = float("inf")) -> list[Answer]:
        """Return the accepting answers (202, or 200 for a duplicate) sent in a span."""
        return [each for each in list(self.answers)
                if each.code in (200, 202) and since <= each.sent < until]


@dataclass
class Failover:
    """What one failover under load came to."""

    killed: float
    promoted: float  # when every sentinel named the replica, and it said it was primary
    recovered: float  # when the first submit sent after the kill was accepted
    editor: Editor
    present: set[str]  # accepted jobs that the new primary has
    states: dict[str, str]  # the final statuses of those that ended
    stranded: set[str]  # started by a live worker running something else (see stranded())
    pools_exited: int

    def lost(self, since: float = 0.0, until: float = float("inf")) -> list[str]:
        """Return the ids of jobs accepted in a span that the new primary does not have."""
        ids = {each.job_id for each in self.editor.accepted(since, until)}
        return sorted(job_id for job_id in ids if job_id and job_id not in self.present)


def failover_under_load(
    root: Path, data_dir: Path, replicas: int, acks: int, partition: bool
) -> Failover:
    """Run the API and two worker pools on a sentinel URL, submit jobs all along, SIGKILL the
    primary (after cutting its replicas off, if partition), and see what the new one holds."""
    with SentinelDeployment(root / "redis", replicas=replicas) as deployment:
        environment = service_environment(
            deployment.url, data_dir, PREVIEW_API_TOKENS=TOKEN,
            PREVIEW_REPLICA_ACKS=str(acks), PREVIEW_REPLICA_TIMEOUT_MS=REPLICA_WAIT_MS,
        )
        with workers(environment, 2, root) as pools, \
                serving(environment, 2, log=root / "api.log") as base:
            editor = Editor(base)
            editor.start()
            time.sleep(WARM_UP)
            if partition:
                deployment.partition()
                time.sleep(PARTITION_FOR)
            deployment.kill_primary()
            killed = time.monotonic()
            wait_until(lambda: deployment.promoted() is not None, RECOVERY_LIMIT,
                       "the sentinels to promote a replica")
            promoted = time.monotonic()
            wait_until(lambda: bool(editor.accepted(since=killed)), RECOVERY_LIMIT,
                       "the API to accept a job again")
            time.sleep(AFTER)
            editor.stop()
            pools_exited = sum(pool.poll() is not None for pool in pools)
            connection = connect(deployment.url)
            ids = sorted({each.job_id for each in editor.accepted() if each.job_id})
            present = {job_id for job_id in ids if connection.exists(keys.job_key(job_id))}

            def settled() -> bool:
                ended = final_states(connection, sorted(present))
                return len(ended) + len(stranded(connection, present - set(ended))) == len(present)

            try:
                wait_until(settled, END_LIMIT, "every accepted job the new primary has to end")
            except AssertionError as error:
                raise AssertionError(f"{error}: {unended(connection, present)}") from None
            states = {job_id: status for job_id, (status, _) in
                      final_states(connection, sorted(present)).items()}
            left = stranded(connection, present - set(states))
            connection.close()
    recovered = min(each.answered for each in editor.accepted(since=killed))
    return Failover(killed, promoted, recovered, editor, present, states, left, pools_exited)


def stranded(connection: redis.Redis, job_ids: set[str]) -> set[str]:
    """Return the jobs recorded as started by a worker that is alive and idle.

    The old primary took the rest of their story with it (finished, say) but not the worker:
    recovery trusts the worker's liveness key and leaves them be, until RQ's own cleanup
    of abandoned jobs (job timeout, then a maintenance pass) retries them.
    """
    found = set()
    for job_id in job_ids:
        status, worker = connection.hmget(keys.job_key(job_id), "status", "worker_name")
        if status != b"started" or not worker:
            continue
        name = keys.text(worker)
        # Our workers run one job at a time and say they are busy before it starts: an idle
        # one runs none. (Its index of executions still names the job: that was lost too.)
        state = connection.hget(BaseWorker.redis_worker_namespace_prefix + name, "state")
        if state != b"busy" and connection.exists(keys.worker_alive_key(name)):
            found.add(job_id)
    return found


def unended(connection: redis.Redis, job_ids: set[str]) -> dict[str, list[str | None]]:
    """Say where each job that has not ended stands: status, worker, queue."""
    ended = final_states(connection, sorted(job_ids))
    return {
        job_id: [None if value is None else keys.text(value) for value in
                 connection.hmget(keys.job_key(job_id), "status", "worker_name", "origin")]
        for job_id in sorted(job_ids - set(ended))
    }


@pytest.mark.slow
def test_primary_sigkilled_under_load_the_replica_takes_over_and_every_process_reconnects(
    tmp_path: Path, data_dir: Path, report: Report
) -> None:
    """Given a primary, a replica and three sentinels, the API and workers on the sentinel URL
    and jobs submitted all along, when the primary is SIGKILLed, then the replica is promoted,
    the API accepts again without a restart, and every job accepted after the failover ends
    finished; accepted jobs lost with asynchronous replication are counted."""
    figures = failover_under_load(tmp_path, data_dir, replicas=1, acks=0, partition=False)
    accepted = figures.editor.accepted()
    refused = [each for each in figures.editor.answers if each.code not in (200, 202)]
    lost = figures.lost()
    report(
        f"async replication, SIGKILL: promoted {figures.promoted - figures.killed:.1f} s and "
        f"first 202 {figures.recovered - figures.killed:.1f} s after the kill; "
        f"{len(accepted)} accepted, {len(refused)} refused meanwhile, {len(lost)} accepted "
        f"jobs lost, {len(figures.stranded)} stranded as started"
    )
    assert figures.pools_exited == 0, "a worker pool exited instead of reconnecting"
    assert figures.recovered - figures.killed < RECOVERY_LIMIT
    assert {each.code for each in refused} <= {503}, "refused otherwise than 503 + Retry-After"
    after = {each.job_id for each in figures.editor.accepted(since=figures.promoted)}
    assert after and after <= set(figures.states)
    assert set(figures.states.values()) == {"finished"}
    assert not after & figures.stranded


@pytest.mark.slow
@pytest.mark.parametrize("acks", [0, 1])
def test_accepted_jobs_survive_a_partitioned_primary_only_when_submits_wait_for_a_replica(
    tmp_path: Path, data_dir: Path, report: Report, acks: int
) -> None:
    """Given both replicas cut off from the primary for half a second before it is SIGKILLed,
    without waiting (PREVIEW_REPLICA_ACKS=0) the jobs it accepted meanwhile are lost; with
    PREVIEW_REPLICA_ACKS=1 they were answered 503, sent again, and none is lost."""
    figures = failover_under_load(tmp_path, data_dir, replicas=2, acks=acks, partition=True)
    cut = figures.killed - PARTITION_FOR
    lost = figures.lost()
    refused = [each for each in figures.editor.answers if each.code not in (200, 202)]
    report(
        f"PREVIEW_REPLICA_ACKS={acks}, replicas cut off {PARTITION_FOR} s, then SIGKILL: "
        f"first 202 {figures.recovered - figures.killed:.1f} s after the kill; "
        f"{len(figures.editor.accepted())} accepted, {len(refused)} refused; "
        f"{len(figures.editor.accepted(since=cut, until=figures.killed))} accepted while cut "
        f"off, {len(lost)} lost; {len(figures.stranded)} stranded as started by a live worker"
    )
    assert figures.pools_exited == 0
    assert set(figures.states.values()) == {"finished"}
    after = {each.job_id for each in figures.editor.accepted(since=figures.promoted)}
    assert after and after <= set(figures.states)
    if acks:
        assert lost == []
    else:
        # The fault is real: what the primary accepted alone is gone, and nothing else.
        assert lost and lost == figures.lost(since=cut - 0.5, until=figures.killed)


@pytest.fixture(scope="module")
def calm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelDeployment]:
    """Give a primary, one replica and three sentinels that no test harms."""
    with SentinelDeployment(tmp_path_factory.mktemp("sentinel"), replicas=1) as deployment:
        yield deployment


@pytest.mark.slow
def test_waiting_for_a_replica_puts_every_job_on_it_at_a_small_cost(
    calm: SentinelDeployment, tmp_path: Path, report: Report
) -> None:
    """Given a primary with one replica, a submit that waits for it returns only once the
    replica holds the job; the cost of the wait is timed against submits that do not wait."""
    plain = load_settings(service_environment(calm.url, tmp_path))
    waiting = load_settings(service_environment(
        calm.url, tmp_path, PREVIEW_REPLICA_ACKS="1", PREVIEW_REPLICA_TIMEOUT_MS="500"
    ))
    connection = connect(calm.url)
    replica = redis.Redis(port=calm.replicas[0].port)
    assert role_of(calm.replicas[0].port) == "slave"
    timings: dict[bool, list[float]] = {False: [], True: []}
    missing = 0
    for number in range(2000):
        waits = number % 2 == 1  # interleaved, so that drift in the machine hits both
        started = time.perf_counter()
        job_id = queueing.submit(
            connection, waiting if waits else plain, distinct_payload(number)
        ).job_id
        timings[waits].append(time.perf_counter() - started)
        if waits:
            missing += not replica.exists(keys.job_key(job_id))
    connection.flushdb()
    connection.close()
    replica.close()
    median = {waits: statistics.median(times) * 1000 for waits, times in timings.items()}
    p99 = {waits: sorted(times)[int(len(times) * 0.99)] * 1000 for waits, times in timings.items()}
    report(
        f"submit on loopback: {median[False]:.3f} ms median, {p99[False]:.2f} ms p99 without "
        f"WAIT; {median[True]:.3f} ms, {p99[True]:.2f} ms with WAIT 1 "
        f"(+{median[True] - median[False]:.3f} ms median)"
    )
    assert missing == 0, "a submit that waited returned before the replica held its job"


@pytest.mark.slow
def test_the_dashboard_health_and_event_streams_follow_the_primary(
    tmp_path: Path, data_dir: Path
) -> None:
    """Given the API on a sentinel URL and an asyncio client of the event streams opened before
    a failover, both serve from the new primary after it, without a restart."""
    with SentinelDeployment(tmp_path / "redis", replicas=1) as deployment:
        environment = service_environment(deployment.url, data_dir, PREVIEW_API_TOKENS=TOKEN)
        loop = asyncio.new_event_loop()
        streams = connect_async(deployment.url, socket_timeout=5)
        try:
            assert loop.run_until_complete(streams.ping())
            with serving(environment, 1) as base:
                assert fetch(base + "/rq/") == 200
                deployment.kill_primary()
                wait_until(lambda: deployment.promoted() is not None, RECOVERY_LIMIT,
                           "the sentinels to promote a replica")
                wait_until(lambda: fetch(base + "/api/preview/worker/health") in (200, 503),
                           RECOVERY_LIMIT, "the health report")
                wait_until(lambda: fetch(base + "/rq/") == 200, RECOVERY_LIMIT, "the dashboard")

                async def news_length() -> int:
                    """Read the news stream's length on the new primary."""
                    return int(await streams.xlen(keys.NEWS))

                def streams_answer() -> bool:
                    try:
                        loop.run_until_complete(news_length())
                        return True
                    except (redis.RedisError, OSError):
                        return False

                wait_until(streams_answer, RECOVERY_LIMIT, "the event streams' client")
        finally:
            loop.run_until_complete(streams.aclose())
            loop.close()


class Interrupted(Exception):
    """Raised by a signal handler in the middle of a read, as RQ's StopRequested is."""


@pytest.mark.slow
def test_a_read_cut_short_drops_the_connection_instead_of_handing_out_its_reply(
    calm: SentinelDeployment,
) -> None:
    """Given a BLPOP interrupted by a signal handler's exception, as RQ's SIGTERM interrupts an
    idle worker's, the next commands get their own replies at once, not the BLPOP's."""

    def interrupt(signum: int, frame: object) -> None:
        raise Interrupted

    connection = connect(calm.url)
    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.2)
        with pytest.raises(Interrupted):
            connection.blpop(["nothing-comes"], timeout=3)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    started = time.monotonic()
    assert connection.set("probe", "mine") is True
    assert connection.get("probe") == b"mine"
    assert time.monotonic() - started < 1, "the next command waited for the BLPOP's reply"
    connection.delete("probe")
    connection.close()


def fetch(url: str) -> int:
    """GET a URL with the tests' token; return the status (0 when nothing answered)."""
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {TOKEN}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as error:
        return int(error.code)
    except OSError:
        return 0


def test_a_pipeline_waits_for_replicas_after_its_scripts_even_when_sent_twice(
    redis_client: redis.Redis,
) -> None:
    """Given a script Redis has lost, the call is sent again and the WAIT with it: the write
    is made, and the missing acknowledgement is still raised as a refusal (NOREPLICAS)."""
    script = "return redis.call('INCR', KEYS[1])"
    sha = redis_client.script_load(script)
    redis_client.script_flush()
    with pytest.raises(ReplicasBehind, match="^NOREPLICAS 0 of 1 replicas") as raised:
        pipelined(redis_client, lambda pipe: pipe.evalsha(sha, 1, "counted"), [script], (1, 5))
    assert is_refusal(raised.value)
    assert redis_client.get("counted") == b"1"
    assert pipelined(redis_client, lambda pipe: pipe.evalsha(sha, 1, "counted"), [script]) == [2]
