"""The command line and what it starts: `ledger` (cli), `ledger up` (runner), the demo and
its generated history, and the query client. The top layer: may import anything below."""
