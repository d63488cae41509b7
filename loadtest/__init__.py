"""Benchmark harnesses and load generators."""
