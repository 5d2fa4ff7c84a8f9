"""The digest a benchmark checks read models by: every state, canonically, hashed."""

from __future__ import annotations

import hashlib

import orjson

from projections.state import LEAN_KEY, lean_head_json, request_from_json


def canonical(state: bytes) -> bytes:
    """A state's JSON as its model writes it whole (a request's changelog keeps its
    history's events as they were recorded, defaults left out, and a lean record only what
    the indexes read of the rest: it must be that of its history's fold), its set of event ids
    sorted (a set's JSON order is the process's hash order) and its keys sorted."""
    obj = orjson.loads(state)
    if "history" in obj:
        request = request_from_json(state)
        if LEAN_KEY in obj:  # what the indexes read of a lean record: the state's, checked
            want = orjson.loads(lean_head_json(request))
            written = {key: obj.get(key) for key in want}
            if written != want:
                return orjson.dumps({"lean head unlike its history's fold": written})
        obj = orjson.loads(request.model_dump_json())
    if "event_ids" in obj:  # a customer's (a request's are read off its history)
        obj["event_ids"] = sorted(obj["event_ids"])
    return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)


def digest_of(states: dict[str, bytes]) -> str:
    """sha256 over the sorted keys (`r:<request>`, `c:<customer>`) and their states."""
    digest = hashlib.sha256()
    for key in sorted(states):
        digest.update(key.encode() + b"\x00" + canonical(states[key]) + b"\x00")
    return digest.hexdigest()


def first_difference(got: dict[str, bytes], want: dict[str, bytes]) -> str:
    """Where two sets of states part (for a failed run's report)."""
    if got.keys() != want.keys():
        extra, missing = sorted(got.keys() - want.keys()), sorted(want.keys() - got.keys())
        return f"keys: {extra[:3]} extra, {missing[:3]} missing"
    key = next(k for k in sorted(want) if canonical(got[k]) != canonical(want[k]))
    ours, theirs = canonical(got[key]), canonical(want[key])
    at = next(i for i, (a, b) in enumerate(zip(ours, theirs, strict=False)) if a != b)
    ours, theirs = ours[max(0, at - 80) : at + 120], theirs[max(0, at - 80) : at + 120]
    return f"{key}: {ours!r} against {theirs!r}"
