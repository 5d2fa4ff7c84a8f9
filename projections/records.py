"""A request's changelog record: its state's lean JSON (its history after what the indexes
read of the rest, `projections.state.request_json`), and what the API's indexes read off
it (issue 11). Pure.

The projector has each request's state in hand as it folds it; the API reads only the
JSON it is sent. So the projector writes into each record, beside the state, what the
API would otherwise parse the state back into objects for (~95 us a state): its share
of the decision metrics (`metricsindex.with_part`) and, while it is open, its latest
assessment (`listindex.with_assessment`), both under a tag of the policy they were taken with. A
request's record reads back to its state (`request_from_json`) whatever keys come first;
an API under another policy, or a record without them, takes them from the state.
"""

from __future__ import annotations

from ledger.rules.policy import Policy
from projections.listindex import with_assessment
from projections.metricsindex import part_of, policy_tag, with_part
from projections.state import RequestState, with_newest

__all__ = ["policy_tag", "request_record"]


def request_record(state: RequestState, state_json: bytes, policy: Policy, tag: str) -> bytes:
    """`state_json` (the state's JSON) with what the API's indexes read, under `tag`
    (`policy_tag(policy)`): the assessment only while the request is open (only the open
    pipeline shows it); its newest event's instant first, so the API parses only what
    comes before the history (`projections.state.record_head`)."""
    if state.status == "open":
        state_json = with_assessment(state_json, state, policy, tag)
    return with_newest(with_part(state_json, part_of(state, policy), tag), state)
