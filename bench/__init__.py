"""Benchmarks (never part of ``make test``): ``python -m bench.transition_bench``."""
