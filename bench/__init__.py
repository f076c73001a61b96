"""The benchmarks: ``python -m bench`` (or ``./dev bench``); see docs/benchmarks.md.

Speed is measured here, never asserted in tests. Every figure that depends on the machine is
reported next to a reference measured in the same run on the same server (``pgbench``), so
runs on shared, noisy machines compare by ratio; statement counts are exact and deterministic.
"""
