"""The API describes itself, and a property-based client holds it to that description.

schemathesis reads `/openapi.json` from the running API and sends generated requests to
every route (valid and invalid parameters, bodies of every shape): no answer may be a
5xx, and every answer must match the document (status, content type, body schema).

One check is left out on purpose: `positive_data_acceptance` expects every body that
fits the JSON schema to be accepted, but the ledger also refuses events for cross-field
rules no JSON schema can state (a decision's rationale must name the dimension it
cites, a revisit date must follow the decision, ...), so such bodies get a 422 that
names the rule. Those refusals are tested in tests/unit/test_schema.py.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from ledger.adapters.config import Settings
from ledger.api.app import build_app
from ledger.api.openapi import document
from tests.integration.conftest import Workers
from tests.integration.test_api import get_json, known_history, publish, wait_folded

pytestmark = pytest.mark.integration

CHECKS = ",".join(
    (
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_schema_conformance",
        "response_headers_conformance",
        "negative_data_rejection",
    )
)


def test_every_route_is_in_the_document(settings: Settings) -> None:
    assert settings.broker is not None
    app = build_app(settings, settings.broker)
    routes = {
        (r.method.lower(), r.resource.canonical)
        for r in app.router.routes()
        if r.resource is not None and r.method != "HEAD"
    }
    documented = {(m, p) for p, ops in document()["paths"].items() for m in ops}
    assert routes - {("get", "/openapi.json")} == documented  # the document itself aside


async def test_schemathesis_finds_no_server_error_and_no_answer_off_the_document(
    settings: Settings, workers: Workers, tmp_path: Path
) -> None:
    events = known_history(40)
    workers.start()
    workers.start("ledger.api")
    await publish(settings, events)
    await wait_folded(settings, len(events), workers)
    served = await get_json(settings, "/openapi.json")
    assert served == document()

    st = Path(sys.executable).with_name("st")
    run = await asyncio.to_thread(
        subprocess.run,
        [
            str(st),
            "run",
            f"{settings.api_url}/openapi.json",
            "--max-examples=10",
            "--seed=1",
            f"--checks={CHECKS}",
        ],
        cwd=tmp_path,  # its example database stays out of the checkout
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:] + workers.logs()
    # It really ran: every operation of the document was exercised.
    operations = sum(len(ops) for ops in document()["paths"].values())
    assert f"{operations} passed" in run.stdout or f"{operations} operations" in run.stdout, (
        run.stdout
    )
