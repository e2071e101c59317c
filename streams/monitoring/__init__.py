"""Monitoring: in-stream drift statistics, Prometheus metrics, structured logs."""
