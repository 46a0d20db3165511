"""Benchmarks of the Fedge SDK; run ``python -m bench.edge --help``."""
