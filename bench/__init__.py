"""Benchmarks: each module `bench/<name>.py` has `run() -> dict`; `python -m bench [NAME]` runs them."""
