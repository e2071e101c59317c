"""Benchmarks: each measures one stage and returns numbers to print."""
