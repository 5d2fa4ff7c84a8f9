"""`python -m ledger.api`: serve the query API against `LEDGER_BROKER` until stopped."""

from ledger.api.app import main

if __name__ == "__main__":
    main()
