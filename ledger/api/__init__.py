"""The HTTP query API (`python -m ledger.api`) and the read model it answers from, which
tails the projector's changelogs. Serves queries, processes no stream. May import every
layer below it (`events`, `ledger.rules`, `projections`, `ledger.adapters`, `workers`);
never `ledger.entrypoints`."""
