"""The faust app: agents, tables and the query API.

Thin wiring around `ledger/` and `projections/`.
"""
