"""Benchmark harness: train and test a bundle for several algorithms and seeds, and tabulate the results."""

from .harness import BenchmarkSpec, run_benchmark
from .tables import mean_std, results_markdown

__all__ = [
    "BenchmarkSpec",
    "mean_std",
    "results_markdown",
    "run_benchmark",
]
