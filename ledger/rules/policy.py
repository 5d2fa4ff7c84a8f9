"""The F.A.I.R. policy (CONTRACT section 4) and the thresholds of section 6.

Pure: `assess(score, intake)` derives `average`, `adjusted`, the automatic stops and
the recommendation from one score and its request's intake. Every number comes from a
`Policy`, whose defaults are the contract's and which a TOML file may override
(`LEDGER_POLICY_FILE`, read with the standard library's tomllib).
"""

from __future__ import annotations

import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from events.schema import IntakeData, ScoreData

Recommendation = Literal["decline", "hold", "conditional_no", "provisional_yes"]


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class FairPolicy(_Section):
    decline_below: float = Field(3.0, ge=0, le=5)
    conditional_below: float = Field(3.5, ge=0, le=5)
    weak_dimension_at_most: int = Field(2, ge=0, le=5)
    zero_blocks: tuple[Literal["fit", "advantage", "integrity", "readiness"], ...] = (
        "fit",
        "advantage",
        "integrity",
    )
    soft_stop_icp_below: float = Field(40.0, ge=0, le=100)
    hard_stop_asks: tuple[str, ...] = ("exclusivity", "price_parity")


class AbusePolicy(_Section):
    partners_fired_at_least: int = Field(2, ge=1)
    distinct_partners_at_least: int = Field(3, ge=1)
    abusive_conduct_at_least: int = Field(2, ge=1)


class DecisionPolicy(_Section):
    overdue_days: int = Field(10, ge=0)
    pilot_review_days: int = Field(45, ge=0)
    pilot_success_days: int = Field(90, ge=0)
    target_business_days: int = Field(10, ge=0)
    holidays: tuple[str, ...] = ()


class Policy(_Section):
    """Every number of the policy; the defaults are CONTRACT section 4 and 6."""

    fair: FairPolicy = FairPolicy()
    abuse: AbusePolicy = AbusePolicy()
    decisions: DecisionPolicy = DecisionPolicy()


class PolicyError(ValueError):
    """The policy file cannot be read or breaks a rule; the message says where."""


def load_policy(path: Path | None) -> Policy:
    """The built-in policy, or the built-in one overridden by the TOML file at `path`."""
    if path is None:
        return Policy()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise PolicyError(f"{path}: cannot read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(f"{path}: not TOML: {exc}") from None
    try:
        return Policy.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise PolicyError(f"{path}: {problems}") from None


@dataclass(frozen=True, slots=True)
class Assessment:
    """What the policy makes of one score."""

    average: float
    adjusted: float
    hard_stops: tuple[str, ...]
    soft_stops: tuple[str, ...]
    critical_risks: tuple[str, ...]
    recommendation: Recommendation
    rule: int  # which rule of section 4 decided (1-5)


def assess(score: ScoreData, intake: IntakeData | None, policy: FairPolicy) -> Assessment:
    """Apply the F.A.I.R. rules in order; the first that holds decides."""
    dims = {
        "fit": score.fit,
        "advantage": score.advantage,
        "integrity": score.integrity,
        "readiness": score.readiness,
    }
    average = sum(dims.values()) / 4
    product = 1.0
    for risk in score.risks:
        product *= risk.multiplier
    adjusted = min(5.0, max(0.0, average * product))
    hard, soft = _stops(score, intake, policy)
    critical = tuple(r.factor for r in score.risks if r.critical)
    recommendation: Recommendation
    if hard:
        recommendation, rule = "decline", 1
    elif critical:
        recommendation, rule = "hold", 2
    elif adjusted < policy.decline_below or any(dims[d] == 0 for d in policy.zero_blocks):
        recommendation, rule = "decline", 3
    elif (
        adjusted < policy.conditional_below
        or any(v <= policy.weak_dimension_at_most for v in dims.values())
        or soft
    ):
        recommendation, rule = "conditional_no", 4
    else:
        recommendation, rule = "provisional_yes", 5
    return Assessment(
        round(average, 4), round(adjusted, 4), hard, soft, critical, recommendation, rule
    )


def _stops(
    score: ScoreData, intake: IntakeData | None, policy: FairPolicy
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Hard and soft stops: the automatic ones from the intake, plus the score's red flags."""
    hard: list[str] = []
    soft: list[str] = []
    if intake is not None:
        asks: Sequence[str] = intake.asks
        hard.extend(f"ask: {a}" for a in asks if a in policy.hard_stop_asks)
        icp = intake.icp_overlap_pct
        if icp is not None and icp < policy.soft_stop_icp_below:
            soft.append(f"icp_overlap_pct {icp:g} < {policy.soft_stop_icp_below:g}")
    for flag in score.red_flags:
        (hard if flag.severity == "hard" else soft).append(f"red flag: {flag.flag}")
    return tuple(hard), tuple(soft)
