"""The request lifecycle rules, without Kafka."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from events import from_mapping
from ledger.rules.lifecycle import Fact, Refusal, SubjectState, Violation, admit
from tests.factories import decision, escalation, intake, revisit, score


def run(*payloads: dict) -> tuple[SubjectState, list[Violation | None]]:
    """Admit events in order; return the final state and, per event, its refusal code."""
    state = SubjectState()
    verdicts: list[Violation | None] = []
    for payload in payloads:
        verdict = admit(state, Fact.of(from_mapping(payload)))
        if isinstance(verdict, Refusal):
            verdicts.append(verdict.code)
        else:
            state = verdict
            verdicts.append(None)
    return state, verdicts


def test_a_full_happy_life() -> None:
    state, verdicts = run(
        intake("R"),
        score("R"),
        decision("R", "provisional_yes"),
        revisit("R", "pilot_review"),
        decision("R", "scaled", name="scale"),
    )
    assert verdicts == [None] * 5
    assert state.status == "decided" and state.had_provisional_yes
    assert len(state.event_ids) == 5


def test_duplicate_event_id_is_refused_whatever_its_type() -> None:
    _, verdicts = run(intake("R"), score("R"), score("R"))
    assert verdicts == [None, None, Violation.DUPLICATE_EVENT_ID]


def test_second_intake_for_the_same_request() -> None:
    _, verdicts = run(intake("R"), intake("R", name="again"))
    assert verdicts == [None, Violation.DUPLICATE_INTAKE]


def test_score_decision_revisit_for_an_unknown_request() -> None:
    _, verdicts = run(score("R"), decision("R"), revisit("R"))
    assert verdicts == [Violation.UNKNOWN_REQUEST] * 3


def test_scaled_needs_an_earlier_provisional_yes() -> None:
    _, verdicts = run(intake("R"), decision("R", "conditional_no"), decision("R", "scaled"))
    assert verdicts == [None, None, Violation.SCALED_WITHOUT_PROVISIONAL_YES]


def test_revisit_of_an_undecided_request() -> None:
    _, verdicts = run(intake("R"), score("R"), revisit("R"))
    assert verdicts[-1] == Violation.REVISIT_OF_UNDECIDED_REQUEST


def test_revisit_reopens_and_a_second_revisit_needs_a_new_decision() -> None:
    state, verdicts = run(
        intake("R"), decision("R", "hold"), revisit("R"), revisit("R", name="again")
    )
    assert verdicts == [None, None, None, Violation.REVISIT_OF_UNDECIDED_REQUEST]
    assert state.status == "open"


def test_escalations_need_no_request_and_dedupe() -> None:
    state, verdicts = run(
        escalation("acme", "p1"), escalation("acme", "p2"), escalation("acme", "p1")
    )
    assert verdicts == [None, None, Violation.DUPLICATE_EVENT_ID]
    assert state.status == "new"


def test_refusal_leaves_the_state_untouched() -> None:
    state, _ = run(intake("R"))
    assert isinstance(admit(state, Fact.of(from_mapping(intake("R", name="x")))), Refusal)
    assert state == run(intake("R"))[0]


def test_fact_from_validated_json_matches_fact_of_event() -> None:
    payload = decision("R", "hold")
    payload["event_id"] = payload["event_id"].upper()
    assert Fact.of_validated_json(payload) == Fact.of(from_mapping(payload))


def test_state_json_roundtrip() -> None:
    state, _ = run(intake("R"), decision("R", "provisional_yes"))
    assert SubjectState.from_json(state.to_json()) == state
    assert SubjectState.from_json(None) == SubjectState()


TYPES = st.sampled_from(["intake", "score", "decision", "revisit"])
OUTCOMES = st.sampled_from(
    ["provisional_yes", "conditional_no", "decline", "hold", "scaled", "withdrawn"]
)


@given(st.lists(st.tuples(TYPES, OUTCOMES), max_size=25))
def test_generated_histories_obey_every_rule(steps: list[tuple[str, str]]) -> None:
    """A reference model of the rules, checked against `admit` for random histories."""
    state = SubjectState()
    status, had_yes = "new", False
    builders = {"intake": intake, "score": score, "revisit": revisit}
    for i, (kind, outcome) in enumerate(steps):
        if kind == "decision":
            payload = decision("R", outcome, name=f"e{i}")
        else:
            payload = builders[kind]("R", name=f"e{i}")
        verdict = admit(state, Fact.of(from_mapping(payload)))
        if kind == "intake":
            expected = Violation.DUPLICATE_INTAKE if status != "new" else None
        elif status == "new":
            expected = Violation.UNKNOWN_REQUEST
        elif kind == "decision" and outcome == "scaled" and not had_yes:
            expected = Violation.SCALED_WITHOUT_PROVISIONAL_YES
        elif kind == "revisit" and status != "decided":
            expected = Violation.REVISIT_OF_UNDECIDED_REQUEST
        else:
            expected = None
        if expected is None:
            assert not isinstance(verdict, Refusal)
            state = verdict
            status = {"intake": "open", "revisit": "open", "decision": "decided"}.get(kind, status)
            had_yes = had_yes or (kind == "decision" and outcome == "provisional_yes")
        else:
            assert isinstance(verdict, Refusal) and verdict.code == expected
        assert state.status == status
        # replaying an admitted event is always a duplicate
        if expected is None:
            replay = admit(state, Fact.of(from_mapping(payload)))
            assert isinstance(replay, Refusal)
            assert replay.code == Violation.DUPLICATE_EVENT_ID
