"""Benchmarks: run by hand (``python -m benchmarks``), results in the README. Never part of the test suite."""
