"""The message drafted for each decision: its facts, its gaps, and a team's own wording."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from events import from_mapping
from projections import fold
from projections.messages import REDIRECTS, TemplateError, check, draft, environment
from projections.state import RequestState
from tests.factories import decision, intake, score


def state_of(*events: dict[str, Any]) -> RequestState:
    folded = fold(from_mapping(e) for e in events)
    return next(iter(folded.requests.values()))


def decided(outcome: str, marks: tuple[int, int, int, int] = (5, 4, 2, 3), **data: Any) -> Any:
    return state_of(
        intake("R1", partner_id="initech", title="Co-selling in the Nordics"),
        score("R1", *marks, **data.pop("score", {})),
        decision("R1", outcome, **data),
    )


def test_no_decision_no_draft() -> None:
    assert draft(state_of(intake("R1"))) is None


def test_conditional_no_lists_the_checklist_the_date_and_what_was_strong() -> None:
    message = draft(
        decided(
            "conditional_no",
            checklist=["two reference customers", "a named engineer"],
            revisit_on="2026-05-04",
            rationale="readiness is not there yet",
        )
    )
    assert message is not None
    assert message.subject.startswith("Co-selling in the Nordics")
    body = message.body
    for fact in ("two reference customers", "a named engineer", "4 May 2026", "fit, advantage"):
        assert fact in body, fact
    assert "readiness is not there yet" in body and "Hello initech" in body
    assert message.gaps == ()


def test_provisional_yes_outlines_the_pilot_and_marks_what_is_missing() -> None:
    message = draft(
        decided("provisional_yes", pilot={"scope": "two joint deals", "success_metric": "one won"})
    )
    assert message is not None
    assert "two joint deals" in message.body and "one won" in message.body
    # no review date in the decision: the ledger's default (45 days after it) is used
    assert "18 April 2026" in message.body
    # accounts are not recorded by a decision: a gap, never an empty line
    assert "Accounts: [to fill: the accounts in the pilot]" in message.body
    assert message.gaps == ("the accounts in the pilot",)


@pytest.mark.parametrize("redirect", sorted(REDIRECTS))
def test_decline_names_the_redirect_and_leaves_the_door_open(redirect: str) -> None:
    message = draft(decided("decline", redirect=redirect))
    assert message is not None
    assert REDIRECTS[redirect] in message.body
    assert "come back" in message.body


def test_decline_without_a_redirect_is_a_gap() -> None:
    message = draft(decided("decline"))
    assert message is not None
    assert "[to fill: where to send them]" in message.body
    assert message.gaps == ("where to send them",)


def test_hold_names_the_critical_risk_or_asks_for_it() -> None:
    risky = {"risks": [{"factor": "data_handling", "multiplier": 0.7, "critical": True}]}
    message = draft(decided("hold", score=risky))
    assert message is not None and "The risk to address: data handling." in message.body
    assert message.gaps == ()
    unnamed = draft(decided("hold"))
    assert unnamed is not None and unnamed.gaps == ("the critical risk to mitigate",)


@pytest.mark.parametrize(
    "outcome", ["provisional_yes", "conditional_no", "decline", "hold", "scaled", "withdrawn"]
)
def test_every_outcome_drafts_without_an_empty_value(outcome: str) -> None:
    state = (
        state_of(
            intake("R1", partner_id="initech"),
            score("R1"),
            decision("R1", "provisional_yes", name="d1"),
            decision("R1", "scaled", name="d2", at="2026-03-20T09:00:00Z"),
        )
        if outcome == "scaled"
        else decided(outcome)
    )
    message = draft(state)
    assert message is not None and message.outcome == outcome
    assert message.subject and message.body
    lines = message.body.splitlines()
    for at, line in enumerate(lines):
        assert not line.rstrip().endswith(("- ", "-")), f"an empty item: {line!r}"
        if line.rstrip().endswith(":"):  # a heading: a list follows it
            assert at + 1 < len(lines) and lines[at + 1].startswith("- "), f"{line!r} lists nothing"


def test_a_team_overrides_one_template_and_keeps_the_others(tmp_path: Path) -> None:
    (tmp_path / "decline.txt").write_text(
        "Subject: About {{ request_id }}\nDear {{ partner }}, no. {{ rationale }}\n"
    )
    env = environment(tmp_path)
    declined = draft(decided("decline"), env)
    assert declined is not None
    assert declined.subject == "About R1" and declined.body == "Dear initech, no. because decline"
    held = draft(decided("hold"), env)
    assert held is not None and "on hold" in held.subject  # ours


def test_a_broken_template_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "decline.txt").write_text("Subject: {{ no_such_field }}\n")
    with pytest.raises(TemplateError, match="decline.txt: 'no_such_field' is undefined"):
        draft(decided("decline"), environment(tmp_path))
    (tmp_path / "hold.txt").write_text("no subject line\n")
    with pytest.raises(TemplateError, match="first line must be"):
        draft(decided("hold"), environment(tmp_path))


def test_templates_are_checked_before_any_request(tmp_path: Path) -> None:
    check(environment())  # ours
    (tmp_path / "hold.txt").write_text("Subject: {{ title }}\n{{ riks }}\n")
    with pytest.raises(TemplateError, match=r"hold.txt: unknown variables \['riks'\]"):
        check(environment(tmp_path))
    (tmp_path / "hold.txt").write_text("Subject: {{ title }\n")
    with pytest.raises(TemplateError, match="hold.txt"):
        check(environment(tmp_path))
