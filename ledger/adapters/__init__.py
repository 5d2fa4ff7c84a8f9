"""Everything that talks to the outside: settings, topics, the Kafka client, the embedded
broker, the publisher and the log reader. May import `events`, `ledger.rules` and
`projections`; never `workers`, `ledger.api` or `ledger.entrypoints`."""
