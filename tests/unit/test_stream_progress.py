"""When /health calls a stage stalled: records wait and its offsets stand still too long."""

from __future__ import annotations

from ledger.api.stream import Progress


def test_a_stage_with_a_backlog_whose_offsets_stand_still_is_stalled() -> None:
    progress = Progress()
    progress.observe(committed=10, backlog=0, now=0.0)
    progress.observe(committed=10, backlog=5, now=2.0)
    assert not progress.stalled(now=2.0, after=5.0)
    progress.observe(committed=10, backlog=5, now=6.0)
    assert progress.stalled(now=6.0, after=5.0)


def test_a_moving_stage_is_not_stalled_however_long_its_backlog() -> None:
    progress = Progress()
    for second in range(0, 100, 2):
        progress.observe(committed=second * 100, backlog=10_000, now=float(second))
        assert not progress.stalled(now=float(second), after=5.0)


def test_an_idle_stage_is_never_stalled() -> None:
    progress = Progress()
    for second in range(0, 100, 2):
        progress.observe(committed=7, backlog=0, now=float(second))
    assert not progress.stalled(now=100.0, after=5.0)
