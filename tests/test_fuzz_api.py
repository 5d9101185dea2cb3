"""Fuzz the API served by the real server from its own OpenAPI description, with schemathesis."""

from __future__ import annotations

import copy
import json
import os
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import schemathesis
from hypothesis import settings

from preview_worker.web.openapi import openapi_document

from .conftest import service_environment
from .processes import serving

TOKEN = "fuzz-token-0123456789"
SEED = 20240601
# Bounds per operation: two busy cores run the whole file in well under 90 s.
AUTHORIZED_EXAMPLES = 25
ANONYMOUS_EXAMPLES = 5
STATEFUL_EXAMPLES = 10  # scenarios of up to 6 chained calls
# The checks that hold each answer to the description; schemathesis's others are off.
CHECKS = [
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
    "response_headers_conformance",
    "ignored_auth",  # a 2xx with the token must turn 401 without it, where a token is asked
    "negative_data_rejection",  # data the description forbids is refused with a 4xx
    "positive_data_acceptance",  # data the description allows is not refused
    "ensure_resource_availability",  # a job just submitted can be read (stateful test)
]


def fuzz_schema(**extra: Any) -> schemathesis.BaseSchema:
    """Return the description with a fixed seed, valid and invalid data, and only CHECKS on."""
    config = schemathesis.Config.from_dict(
        {
            "seed": SEED,
            "generation": {"mode": "all"},
            "checks": {"enabled": False, **{name: {"enabled": True} for name in CHECKS}},
            # No worker runs here, so health reports 503 "unhealthy": the probe's documented
            # verdict, not a failure of the server. Any other 5xx, here or elsewhere, fails.
            "operations": [
                {
                    "include-path": "/api/preview/worker/health",
                    "checks": {
                        "not_a_server_error": {"expected-statuses": ["2xx", "3xx", "4xx", "503"]}
                    },
                }
            ],
            **extra,
        }
    )
    # A copy: schemathesis writes the links it infers into the dict it is given, and
    # openapi_document() hands every caller in this process the same cached one.
    document = copy.deepcopy(openapi_document())
    # notify.url must name a host the deployment allows (PREVIEW_WEBHOOK_HOSTS), which no
    # description can spell: the fuzzed copy leaves notify out, so a body with one is data it
    # forbids, refused with 422 as the served API (webhooks off here) refuses it.
    del document["components"]["schemas"]["Payload"]["properties"]["notify"]
    return schemathesis.openapi.from_dict(document, config=config)


# schemathesis makes one test per operation while pytest collects, before any server
# runs, so it reads the description from the code that serves it (from_fixture, which
# would load it from the server, fails on pytest 9.2: it sets Node._nodeid, now gone).
# test_the_fuzzed_description_is_the_served_one ties the two together.
authorized = fuzz_schema(auth={"openapi": {"bearer": {"bearer": TOKEN}}})
# Without a token schemathesis sends none, an empty one or a made-up one; coverage's
# hundreds of boundary bodies would all stop at the same 401, so only fuzzing runs.
anonymous = fuzz_schema(phases={"coverage": {"enabled": False}})


@pytest.fixture(scope="module")
def served_api(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Give the base URL of `preview-worker serve` (2 processes) with one token."""
    environment = service_environment(
        redis_url, tmp_path_factory.mktemp("fuzz-data"), PREVIEW_API_TOKENS=TOKEN
    )
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    with pytest.MonkeyPatch.context() as monkeypatch:
        # clean_environment runs per test, after this fixture starts the server: keep the
        # developer's own service settings out of the server here too.
        for name in list(os.environ):
            if name in ("REDIS_URL", "DATA_DIR") or name.startswith("PREVIEW_"):
                if name != "PREVIEW_TEST_REDIS_URL":
                    monkeypatch.delenv(name)
        with serving(environment, workers=2) as base:
            yield base
    client.flushdb()
    client.close()


def fuzz_settings(max_examples: int, **extra: Any) -> settings:
    """Return bounded, reproducible Hypothesis settings that keep nothing between runs."""
    return settings(
        max_examples=max_examples, deadline=None, derandomize=True, database=None, **extra
    )


def test_the_fuzzed_description_is_the_served_one(served_api: str) -> None:
    """Given the running server, GET openapi.json answers the very description fuzzed here."""
    request = urllib.request.Request(
        served_api + "/api/preview/openapi.json", headers={"Authorization": f"Bearer {TOKEN}"}
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        assert json.loads(answer.read()) == openapi_document()


@authorized.parametrize()
@fuzz_settings(AUTHORIZED_EXAMPLES)
def test_every_authorized_answer_matches_the_description(
    case: schemathesis.Case[Any], served_api: str
) -> None:
    """Given generated calls with the token, no answer is a 5xx or strays from the description."""
    case.call_and_validate(base_url=served_api)


@anonymous.parametrize()
@fuzz_settings(ANONYMOUS_EXAMPLES)
def test_every_anonymous_answer_matches_the_description(
    case: schemathesis.Case[Any], served_api: str
) -> None:
    """Given generated calls without a valid token, each answer (mostly 401) fits the spec."""
    case.call_and_validate(base_url=served_api)


def test_job_workflows_match_the_description(served_api: str, redis_url: str) -> None:
    """Given submit, read and cancel chained by the links schemathesis infers, all answers fit."""
    client = redis.Redis.from_url(redis_url)

    class Workflow(authorized.as_state_machine()):  # type: ignore[misc]
        """The state machine of the description, aimed at the running server."""

        def setup(self) -> None:
            """Start each scenario on an empty queue."""
            # Which steps can follow depends on the answers (202 new, 200 duplicate), so
            # jobs left by an earlier scenario would make Hypothesis's replays diverge.
            client.flushdb()

        def get_call_kwargs(self, case: schemathesis.Case[Any]) -> dict[str, Any]:
            """Send every call to the running server."""
            return {"base_url": served_api}

    try:
        Workflow.run(settings=fuzz_settings(STATEFUL_EXAMPLES, stateful_step_count=6))
    finally:
        client.close()
