"""The message partner ops send with a decision, drafted from the request's state.

Pure: a request's state in, a `Draft` (subject, body, the gaps left to fill) out. The
wording lives in Jinja templates, one per outcome (`projections/templates/messages/
<outcome>.txt`); a team overrides any of them with a file of the same name in
`LEDGER_TEMPLATES_DIR`. A template's first line is `Subject: ...`, the rest the body.

What the decision did not record (a pilot without a review date, a decline without a
redirect, a hold whose score names no critical risk) is rendered as `[to fill: ...]` and
listed in `gaps`, never left as an empty line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

from jinja2 import ChoiceLoader, Environment, FileSystemLoader, StrictUndefined, meta

from events.schema import Decision, DecisionData
from projections.state import RequestState

TEMPLATES = Path(__file__).parent / "templates" / "messages"
DIMENSIONS = ("fit", "advantage", "integrity", "readiness")
STRONG = 4  # a dimension scored this or higher is named as a strength
WEAK = 2  # this or lower is named as a weakness
REDIRECTS = {
    "directory": "a listing in our partner directory, so customers can find you directly",
    "community": "the partner community forum, where other partners share what worked",
    "api_guide": "the self-serve API guide, to build the integration without waiting on us",
    "office_hours": "our monthly partner office hours, to work through it with an engineer",
    "none": "no alternative route from us at this point",
}


class Gap(str):
    """A value the decision did not record: rendered as a marker to fill in."""

    __slots__ = ()

    def __new__(cls, what: str) -> Gap:
        return super().__new__(cls, f"[to fill: {what}]")


@dataclass(frozen=True)
class Draft:
    request_id: str
    outcome: str
    subject: str
    body: str
    gaps: tuple[str, ...] = field(default=())

    def as_dict(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "outcome": self.outcome,
            "subject": self.subject,
            "body": self.body,
            "gaps": list(self.gaps),
        }

    def as_text(self) -> str:
        return f"Subject: {self.subject}\n\n{self.body}"


class TemplateError(ValueError):
    """A template that cannot render (unknown variable, bad syntax, no subject line)."""


def environment(templates_dir: Path | None = None) -> Environment:
    """Our templates, overridden file by file by `templates_dir`."""
    loaders = [FileSystemLoader(str(TEMPLATES))]
    if templates_dir is not None:
        loaders.insert(0, FileSystemLoader(str(templates_dir)))
    return Environment(
        loader=ChoiceLoader(loaders),
        undefined=StrictUndefined,  # a misspelt variable is an error, not a blank
        keep_trailing_newline=False,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,  # noqa: S701 - plain-text messages, never HTML
    )


OUTCOMES = ("provisional_yes", "conditional_no", "decline", "hold", "scaled", "withdrawn")
CONTEXT = frozenset(
    (
        "request_id", "title", "owner", "partner", "customer", "kind", "outcome", "rationale",
        "decided_on", "revisit_on", "checklist", "strengths", "weaknesses", "critical_risks",
        "pilot", "redirect",
    )
)  # fmt: skip


def check(env: Environment) -> None:
    """Every outcome's template parses and names only variables a draft provides (the
    API checks a team's templates when it starts, not at the first request)."""
    for outcome in OUTCOMES:
        name = f"{outcome}.txt"
        try:
            source = env.loader.get_source(env, name)[0] if env.loader else ""
            unknown = meta.find_undeclared_variables(env.parse(source)) - CONTEXT
        except Exception as exc:  # noqa: BLE001 - jinja raises many kinds
            raise TemplateError(f"{name}: {exc}") from exc
        if unknown:
            raise TemplateError(f"{name}: unknown variables {sorted(unknown)}")
        if not source.startswith("Subject:"):
            raise TemplateError(f"{name}: the first line must be 'Subject: ...'")


def draft(state: RequestState, env: Environment | None = None) -> Draft | None:
    """The message for the request's latest decision (None if it has none)."""
    decision = _last_decision(state)
    if decision is None:
        return None
    context = _context(state, decision)
    env = env or environment()
    try:
        text = env.get_template(f"{decision.outcome}.txt").render(**context)
    except Exception as exc:  # noqa: BLE001 - jinja raises many kinds
        raise TemplateError(f"{decision.outcome}.txt: {exc}") from exc
    first, _, rest = text.partition("\n")
    if not first.startswith("Subject:"):
        raise TemplateError(f"{decision.outcome}.txt: the first line must be 'Subject: ...'")
    gaps = tuple(sorted({g[len("[to fill: ") : -1] for g in _gaps(context) if g in text}))
    return Draft(
        state.request_id, decision.outcome, first[len("Subject:") :].strip(), rest.strip(), gaps
    )


def _last_decision(state: RequestState) -> DecisionData | None:
    last = state.last_decision
    if last is None:
        return None
    for event in reversed(state.history):
        if isinstance(event, Decision) and str(event.event_id) == last.event_id:
            return event.data
    return None


def _day(value: date | None, what: str) -> str:
    return value.strftime("%-d %B %Y") if value is not None else Gap(what)


def _context(state: RequestState, decision: DecisionData) -> dict[str, Any]:
    intake = state.intake
    score = state.last_decision.score if state.last_decision else None
    score = score or state.score
    marks = {d: getattr(score, d) for d in DIMENSIONS} if score is not None else {}
    strong = [d for d, v in marks.items() if v >= STRONG]
    weak = [d for d, v in marks.items() if v <= WEAK]
    critical = [r.factor.replace("_", " ") for r in (score.risks if score else ()) if r.critical]
    pilot = decision.pilot
    last = state.last_decision
    return {
        "request_id": state.request_id,
        "title": intake.title,
        "owner": intake.owner,
        "partner": intake.partner_id or Gap("the partner's name"),
        "customer": intake.customer_id,
        "kind": intake.kind.replace("_", " "),
        "outcome": decision.outcome,
        "rationale": decision.rationale,
        "decided_on": _day(last.occurred_at.date() if last else None, "the decision date"),
        "revisit_on": _day(decision.revisit_on, "the revisit date"),
        "checklist": list(decision.checklist or ()) or [Gap("what to have ready")],
        "strengths": [d for d in strong] or [Gap("what was strong")],
        "weaknesses": [d for d in weak],
        "critical_risks": critical or [Gap("the critical risk to mitigate")],
        "pilot": {
            "scope": pilot.scope if pilot else Gap("the pilot's scope"),
            "success_metric": pilot.success_metric if pilot else Gap("the success metric"),
            # the pilot's own date, else the one the ledger set (45 days after it)
            "review_on": _day(
                (pilot.review_on if pilot else None) or (last.review_on if last else None),
                "the review date",
            ),
            "accounts": Gap("the accounts in the pilot"),  # the decision does not record them
        },
        "redirect": (
            REDIRECTS[decision.redirect] if decision.redirect else Gap("where to send them")
        ),
    }


def _gaps(value: Any) -> list[Gap]:
    if isinstance(value, Gap):
        return [value]
    if isinstance(value, dict):
        return [g for v in value.values() for g in _gaps(v)]
    if isinstance(value, list | tuple):
        return [g for v in value for g in _gaps(v)]
    return []
