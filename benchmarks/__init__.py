"""Benchmarks: performance studies of fastvec against other vectorizers (not tests)."""
