"""Benchmarks: each module `bench/<name>.py` has `run() -> dict`; `python -m bench [NAME]` runs them."""


def pctl(xs: list[float], q: float) -> float:
    """The q-quantile (0..1) of xs: the sample nearest to rank q x (n - 1)."""
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q * (len(xs) - 1))))]
