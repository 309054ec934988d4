"""Metrics, Prometheus configuration and alert rules, and the Grafana dashboard of the system.

See ``docs/monitoring.md``; every metric is created in :mod:`monitoring.metrics`.
"""
