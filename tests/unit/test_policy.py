"""The F.A.I.R. policy, rule by rule, in order; and the policy file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from events import from_mapping
from events.schema import IntakeData, ScoreData
from ledger.rules.policy import FairPolicy, PolicyError, assess, load_policy
from tests.factories import intake, score

DEFAULT = FairPolicy()


def S(fit: int, adv: int, integ: int, ready: int, **data: Any) -> ScoreData:
    return from_mapping(score("R", fit, adv, integ, ready, **data)).data  # type: ignore[return-value]


def I(**data: Any) -> IntakeData:  # noqa: E743
    return from_mapping(intake("R", **data)).data  # type: ignore[return-value]


def test_worked_example_4_3_5_2_is_conditional_no() -> None:
    result = assess(S(4, 3, 5, 2), I(), DEFAULT)
    assert result.average == 3.5 and result.adjusted == 3.5
    assert (result.recommendation, result.rule) == ("conditional_no", 4)


def test_adjusted_multiplies_risks_and_clamps() -> None:
    risky = [
        {"factor": "data_handling", "multiplier": 0.8},
        {"factor": "channel_conflict", "multiplier": 0.9},
    ]
    assert assess(S(4, 4, 4, 4, risks=risky), None, DEFAULT).adjusted == pytest.approx(2.88)
    boosted = [{"factor": "exclusivity", "multiplier": 1.2}] * 2
    assert assess(S(5, 5, 5, 5, risks=boosted), None, DEFAULT).adjusted == 5.0


def test_rule_1_hard_stop_ask_declines_even_a_perfect_score() -> None:
    for ask in ("exclusivity", "price_parity"):
        result = assess(S(5, 5, 5, 5), I(asks=[ask, "co_sell"]), DEFAULT)
        assert (result.recommendation, result.rule) == ("decline", 1)
        assert result.hard_stops == (f"ask: {ask}",)


def test_rule_1_hard_red_flag() -> None:
    flags = [{"flag": "unlicensed IP", "severity": "hard"}]
    assert assess(S(5, 5, 5, 5, red_flags=flags), None, DEFAULT).rule == 1


def test_rule_1_comes_before_rule_2() -> None:
    critical = [{"factor": "regulatory_exposure", "multiplier": 1.0, "critical": True}]
    result = assess(S(5, 5, 5, 5, risks=critical), I(asks=["exclusivity"]), DEFAULT)
    assert result.recommendation == "decline" and result.rule == 1


def test_rule_2_critical_risk_holds_even_a_low_score() -> None:
    critical = [{"factor": "data_handling", "multiplier": 0.5, "critical": True}]
    result = assess(S(1, 0, 1, 1, risks=critical), None, DEFAULT)
    assert (result.recommendation, result.rule) == ("hold", 2)
    assert result.critical_risks == ("data_handling",)


@pytest.mark.parametrize(
    ("dims", "rule"),
    [
        ((3, 3, 3, 2), 3),  # adjusted 2.75 < 3.0
        ((0, 5, 5, 5), 3),  # zero fit
        ((5, 0, 5, 5), 3),  # zero advantage
        ((5, 5, 0, 5), 3),  # zero integrity
        ((5, 5, 5, 0), 4),  # zero readiness is only a weak dimension
        ((3, 3, 3, 3), 4),  # adjusted 3.0: not < 3.0, but < 3.5
        ((5, 5, 5, 2), 4),  # a dimension <= 2
        ((4, 4, 3, 3), 5),  # 3.5, nothing weak
    ],
)
def test_rules_3_to_5(dims: tuple[int, int, int, int], rule: int) -> None:
    assert assess(S(*dims), None, DEFAULT).rule == rule


def test_rule_4_soft_stops() -> None:
    low_icp = assess(S(5, 5, 5, 5), I(icp_overlap_pct=39.9), DEFAULT)
    assert (low_icp.recommendation, low_icp.soft_stops) == (
        "conditional_no",
        ("icp_overlap_pct 39.9 < 40",),
    )
    assert assess(S(5, 5, 5, 5), I(icp_overlap_pct=40), DEFAULT).rule == 5
    flag = [{"flag": "webinar-only plan", "severity": "soft"}]
    assert assess(S(5, 5, 5, 5, red_flags=flag), None, DEFAULT).rule == 4


def test_risk_can_push_below_the_decline_line() -> None:
    assert (
        assess(
            S(4, 4, 4, 4, risks=[{"factor": "channel_conflict", "multiplier": 0.8}]), None, DEFAULT
        ).rule
        == 4
    )  # 3.2
    assert (
        assess(
            S(4, 4, 4, 4, risks=[{"factor": "channel_conflict", "multiplier": 0.7}]), None, DEFAULT
        ).rule
        == 3
    )  # 2.8


def test_policy_file_overrides_numbers(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(
        "[fair]\nconditional_below = 4.0\nsoft_stop_icp_below = 50\n"
        "[abuse]\npartners_fired_at_least = 3\n"
        '[decisions]\nholidays = ["2026-12-25"]\n'
    )
    policy = load_policy(path)
    assert policy.fair.conditional_below == 4.0
    assert policy.fair.decline_below == 3.0  # untouched numbers keep their defaults
    assert policy.abuse.partners_fired_at_least == 3
    assert policy.decisions.holidays == ("2026-12-25",)
    assert assess(S(4, 4, 3, 4), None, policy.fair).recommendation == "conditional_no"
    assert assess(S(4, 4, 3, 4), None, DEFAULT).recommendation == "provisional_yes"


def test_policy_file_errors_name_the_setting(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text("[fair]\ndecline_below = 7\n")
    with pytest.raises(PolicyError, match="fair.decline_below"):
        load_policy(path)
    path.write_text("[fiar]\n")
    with pytest.raises(PolicyError, match="fiar"):
        load_policy(path)
    path.write_text("not = [toml")
    with pytest.raises(PolicyError, match="not TOML"):
        load_policy(path)
    with pytest.raises(PolicyError, match="cannot read"):
        load_policy(tmp_path / "missing.toml")
    assert load_policy(None).fair == DEFAULT
