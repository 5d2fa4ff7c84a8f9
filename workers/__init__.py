"""The stream workers (validator, projector, alerting, webhook delivery) and the query API.

Thin wiring around `ledger/` and `projections/`, on aiokafka (see `workers/runtime.py`).
"""
