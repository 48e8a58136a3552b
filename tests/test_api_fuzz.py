"""The HTTP API fuzzed from its own OpenAPI schema (schemathesis) against a real hub.

Every operation gets generated requests, valid and invalid; what must hold for all of them:
no 5xx, and every refusal is a 4xx carrying ``{"error": {"code": ..., "message": ...}}`` with
a stable code. The hub runs on a scratch database of its own, since the fuzzer creates
cases, rules and acknowledgements at random.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from tests.conftest import HubProcess, town_database
from tests.test_open311 import is_xml, open311_xml_error_problem

# Examples per operation: enough to reach every parameter's edge cases (schemathesis walks
# the schema's boundaries before random data) while keeping the suite's time in check.
EXAMPLES = 25
# The suite replays the same generated requests every run (a gate must not fail at random);
# GRIDHUB_FUZZ_EXPLORE=1 draws new ones each run, to hunt for more.
EXPLORE = os.environ.get("GRIDHUB_FUZZ_EXPLORE") == "1"


@pytest.fixture(scope="module")
def fuzz_hub(base_db_url: str, mqtt_url: str) -> Iterator[HubProcess]:
    loop = asyncio.new_event_loop()
    ctx = town_database(base_db_url, "z")
    url = loop.run_until_complete(ctx.__aenter__())
    hub = HubProcess(url, mqtt_url).start()
    try:
        yield hub
    finally:
        hub.stop()
        loop.run_until_complete(ctx.__aexit__(None, None, None))
        loop.close()


def _refusal_has_a_stable_code(path: str, response: Any) -> str | None:
    if response.status_code < 400:
        return None
    if path.startswith("/open311/") and is_xml(response):
        return open311_xml_error_problem(response)
    try:
        body = response.json()
    except ValueError:
        return f"{response.status_code} without a JSON body: {response.text[:200]!r}"
    if path.startswith("/open311/"):
        # GeoReport v2 has its own error shape: [{"code": <status>, "description": ...}].
        ok = (isinstance(body, list) and body and isinstance(body[0], dict)
              and body[0].get("code") == response.status_code and body[0].get("description"))
        return None if ok else f"{response.status_code}: not a GeoReport error: {body!r:.200}"
    err = body.get("error") if isinstance(body, dict) else None
    if not (isinstance(err, dict) and isinstance(err.get("code"), str) and err["code"]):
        return f"{response.status_code} without an error code: {str(body)[:200]}"
    return None


def _check(case: Any, headers: dict[str, str]) -> None:
    response = case.call(timeout=30, headers=headers)
    assert response.status_code < 500, (
        f"{response.status_code}: {response.text[:300]}\n{case.as_curl_command()}")
    problem = _refusal_has_a_stable_code(case.path, response)
    assert problem is None, f"{problem}\n{case.as_curl_command()}"


# Its time grows with the API (some 130 operations x 2 modes x EXAMPLES requests: ~200 s
# here); the suite-wide 300 s guard is for tests that hang, not for this one's length.
@pytest.mark.timeout(600)
def test_no_request_gets_a_server_error(fuzz_hub: HubProcess) -> None:
    # schemathesis' pytest plugin does not work with this pytest; its strategies are driven
    # by hypothesis directly, one operation at a time, valid and invalid data both.
    schema = schemathesis.openapi.from_url(fuzz_hub.url + "/openapi.json",
                                           headers=fuzz_hub.headers)
    failures: list[str] = []
    operations = 0
    for result in schema.get_all_operations():
        op = result.ok()
        operations += 1
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            @given(case=op.as_strategy(mode))
            @settings(max_examples=EXAMPLES, deadline=None, database=None,
                      derandomize=not EXPLORE,
                      suppress_health_check=list(HealthCheck), phases=[Phase.generate])
            def run(case: Any) -> None:
                _check(case, fuzz_hub.headers)

            try:
                run()
            except AssertionError as e:
                failures.append(f"{op.label} ({mode.value}): {e}")
            except Unsatisfiable:
                pass  # no invalid request can be built for this operation
    assert operations > 20, f"only {operations} operations in the schema"
    assert not failures, "\n\n".join(failures)
