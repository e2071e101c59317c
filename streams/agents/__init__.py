"""Thin faust agents: each takes a batch from a stream and hands it to pure functions."""
