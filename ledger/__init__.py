"""The ledger, in layers: `rules` (pure domain), `adapters` (Kafka, broker, settings),
`api` (the HTTP query API) and `entrypoints` (the command line). Imports go upwards only;
`tests/unit/test_layers.py` checks it."""
