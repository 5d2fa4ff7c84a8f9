"""The SQL projection's rows, pure (issue 9): what a request, a decision, a rejection and an
alert become, and the read-only guard of `ledger sql`."""

from __future__ import annotations

from datetime import date, datetime
from pathlib import Path

import orjson
import pytest

from events import from_mapping
from ledger.adapters.sql import Changes, WriteRefused, check_read_only
from ledger.rules.policy import Policy
from projections import fold
from projections.tables import (
    ALERTS,
    DECISIONS,
    REJECTIONS,
    REQUESTS,
    TABLES,
    alert_row,
    column_docs,
    delivery_row,
    rejection_row,
    request_rows,
)  # fmt: skip
from tests.factories import decision, intake, revisit, score

POLICY = Policy()


def named(table: object, row: tuple[object, ...]) -> dict[str, object]:
    return dict(zip(table.names, row, strict=True))  # type: ignore[attr-defined]


def test_a_request_and_its_decisions_become_rows() -> None:
    f = fold(
        from_mapping(e)
        for e in (
            intake("R1", partner_id="initech", at="2026-03-02T09:00:00Z"),  # a Monday
            score("R1", 5, 5, 5, 5, at="2026-03-03T09:00:00Z"),  # recommends a yes
            decision("R1", "decline", at="2026-03-05T09:00:00Z"),  # overrides it
            revisit("R1", at="2026-04-01T09:00:00Z"),
            decision(
                "R1",
                "conditional_no",
                checklist=["two references"],
                revisit_on="2026-06-01",
                at="2026-04-20T09:00:00Z",
            ),
        )
    )
    request, decisions = request_rows(f.requests["R1"], POLICY, 10, "calendar")
    r = named(REQUESTS, request)
    assert (r["status"], r["stage"], r["last_outcome"], r["revisits"]) == (
        "decided", "decided", "conditional_no", 1,
    )  # fmt: skip
    assert (r["decisions"], r["events"], r["partner_id"]) == (2, 5, "initech")
    assert r["revisit_on"] == date(2026, 6, 1) and r["decision_due_at"] is None
    first, second = (named(DECISIONS, d) for d in decisions)
    assert (first["outcome"], first["business_days_to_decide"], first["within_target"]) == (
        "decline", 3, True,
    )  # fmt: skip
    assert first["recommendation"] == "provisional_yes" and first["overrode_recommendation"]
    # the revisit started a new cycle: 13 business days from 1 April to 20 April
    assert second["first_of_cycle"] and second["business_days_to_decide"] == 13
    assert second["within_target"] is False
    assert orjson.loads(str(second["checklist"])) == ["two references"]


def test_an_open_request_is_due_after_its_threshold() -> None:
    f = fold([from_mapping(intake("R2", at="2026-03-02T09:00:00Z"))])
    r = named(REQUESTS, request_rows(f.requests["R2"], POLICY, 10, "calendar")[0])
    assert r["status"] == "open" and r["stage"] == "intake"
    assert r["decision_due_at"] == datetime.fromisoformat("2026-03-12T09:00:00+00:00")


def test_a_rejection_record_of_any_shape_gets_a_row() -> None:
    refused = orjson.dumps(
        {
            "rejected_at": "2026-03-02T09:00:00+00:00",
            "reasons": [{"code": "schema", "field": "data.fit", "message": "must be 0-5"}],
            "inbox": {"partition": 1, "offset": 7, "key": "R1"},
            "original_text": "{}",
            "original_bytes": 2,
        }
    )
    row = named(REJECTIONS, rejection_row(refused, 0, 3))
    assert (row["code"], row["field"], row["inbox_offset"], row["log_offset"]) == (
        "schema", "data.fit", 7, 3,
    )  # fmt: skip
    odd = named(REJECTIONS, rejection_row(b"\xff not json", 2, 9))
    assert odd["code"] is None and odd["original_text"] is not None and odd["log_partition"] == 2
    wrong = named(REJECTIONS, rejection_row(b'{"rejected_at": 5, "reasons": "x"}', 0, 1))
    assert wrong["rejected_at"] is None and wrong["reasons"] == "[]"


def test_records_that_are_not_alerts_are_left_out() -> None:
    assert alert_row(b"nope") is None and alert_row(b"[]") is None
    assert delivery_row(b'{"alert_id": "a"}') is None  # no webhook
    row = alert_row(orjson.dumps({"alert_id": "a", "kind": "k", "subject_id": "R1"}))
    assert row is not None and named(ALERTS, row)["raised_at"] is None


def test_a_batch_keeps_one_row_per_key_the_last() -> None:
    changes = Changes()
    changes.replace(ALERTS, ("a",), ("a", "k", "R1", None, None))
    changes.replace(ALERTS, ("a",), ("a", "k2", "R1", None, None))
    assert changes.deletes(ALERTS) == [("a",)]
    assert changes.inserts(ALERTS) == [("a", "k2", "R1", None, None)]


@pytest.mark.parametrize(
    "sql",
    ["DROP TABLE events", "delete from requests", "SELECT 1; INSERT INTO events VALUES (1)",
     "CREATE TABLE x (a int)", "COPY requests TO 'x.csv'", "ATTACH 'other.db'", "SET threads = 1"],
)  # fmt: skip
def test_ledger_sql_refuses_what_is_not_a_query(sql: str) -> None:
    with pytest.raises(WriteRefused, match="read-only"):
        check_read_only(sql)


def test_ledger_sql_runs_queries() -> None:
    check_read_only("WITH x AS (SELECT 1) SELECT * FROM x; SELECT 2")
    check_read_only("EXPLAIN SELECT * FROM requests")


def test_the_readme_documents_every_table_and_column() -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    for table in TABLES:
        start = readme.index(f"**`{table.name}`**")
        block = readme[start : readme.index("\n\n**", start + 1)]
        for _, column, _, _ in (d for d in column_docs() if d[0] == table.name):
            assert f"| `{column}` |" in block, (table.name, column)
