"""Pure folds from ledger events to read models."""
