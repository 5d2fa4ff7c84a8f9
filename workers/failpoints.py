"""Failpoints: a worker kills itself (SIGKILL) at a named point, for crash tests.

`LEDGER_FAILPOINT=<name>@<n>` kills the process the n-th time it passes `<name>`; unset
(always, outside tests) it costs one dictionary lookup. Tests use it to land a SIGKILL in
a window a few milliseconds wide, such as between a batch's verdicts and its state.
"""

from __future__ import annotations

import os
import signal

_passes: dict[str, int] = {}
_armed = os.environ.get("LEDGER_FAILPOINT", "")


def failpoint(name: str) -> None:
    if not _armed.startswith(name + "@"):
        return
    _passes[name] = _passes.get(name, 0) + 1
    if _passes[name] >= int(_armed.rpartition("@")[2]):
        os.kill(os.getpid(), signal.SIGKILL)
