"""The stream runtime and its processors (validator, projector, alert dispatcher):
thin wiring of `ledger.rules` and `projections` on aiokafka (see `workers/runtime.py`).
May import `events`, `ledger.rules`, `projections` and `ledger.adapters`; never
`ledger.api` or `ledger.entrypoints`."""
