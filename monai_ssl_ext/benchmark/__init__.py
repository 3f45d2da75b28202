"""Benchmark harness: train and test a bundle for several algorithms and seeds, and tabulate the results."""

from .bundle_runner import BundleRunError, bundle_command, find_bundle, run_workflow
from .harness import BenchmarkSpec, run_benchmark
from .tables import mean_std, results_markdown

__all__ = [
    "BenchmarkSpec",
    "BundleRunError",
    "bundle_command",
    "find_bundle",
    "mean_std",
    "results_markdown",
    "run_benchmark",
    "run_workflow",
]
