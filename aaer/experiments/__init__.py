"""Experiments beyond one run: the CPU-scale CO fixture and `aaer demo` (demo.py), suites
of runs and their summary (reproduce.py)."""
