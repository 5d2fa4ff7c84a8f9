"""`python -m workers`: run the ledger's workers against `LEDGER_BROKER` until stopped."""

from workers.worker import main

if __name__ == "__main__":
    main()
