"""Benchmarks (``make bench`` / ``python -m bench.run``). Results go to bench/results/ (git-ignored)."""
