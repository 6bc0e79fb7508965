"""The benchmark's costs that grew faster than its samples: each test checks the behaviour that keeps it linear
(operations counted, memory traced), never a wall-clock time."""

import subprocess
import sys
import tracemalloc
from concurrent.futures import Future

import numpy as np
import pytest
from test_bench_runner import bench_set  # noqa: F401 (a fixture)

from seminft_bench.bench import report, stats
from seminft_bench.bench.runner import RunOptions, run_benchmark


def one_shot_bootstrap(values: np.ndarray, resamples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The bootstrap drawn in one (resamples × samples) array: what the chunked one must equal, draw for draw."""
    draws = np.random.default_rng(seed).integers(0, values.shape[1], size=(resamples, values.shape[1]))
    means = values[:, draws].mean(axis=2)
    return tuple(np.quantile(means, [0.025, 0.975], axis=1, method="inverted_cdf"))


@pytest.mark.parametrize(("samples", "chunk_elements"), [(7, 1 << 22), (300, 3 * 300 * 13), (301, 1)])
def test_a_chunked_bootstrap_equals_the_one_shot_one_for_the_same_seed(samples, chunk_elements, monkeypatch):
    monkeypatch.setattr(stats, "BOOTSTRAP_CHUNK_ELEMENTS", chunk_elements)
    values = np.random.default_rng(1).normal(size=(3, samples))
    low, high = one_shot_bootstrap(values, 2000, seed=5)
    estimates = stats.paired_bootstrap(values, 2000, seed=5)
    assert [e.low for e in estimates] == list(low) and [e.high for e in estimates] == list(high)


def test_the_bootstraps_memory_is_bounded_by_methods_times_samples():
    """8 methods × 20,000 samples: drawn at once, 2,000 replicates would hold 2.56 GB of means' inputs."""
    values = np.random.default_rng(0).normal(size=(8, 20_000))
    tracemalloc.start()
    try:
        stats.paired_bootstrap(values, 2000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * stats.BOOTSTRAP_CHUNK_ELEMENTS * 8 + values.nbytes  # a few chunks, never replicates × samples


class CountedId(str):
    """A sample id that counts the comparisons made with it."""

    comparisons = 0

    def __eq__(self, other):
        CountedId.comparisons += 1
        return str.__eq__(self, other)

    __hash__ = str.__hash__


def test_a_report_column_checks_each_sample_once_not_against_every_other():
    samples = [CountedId(f"s{i}") for i in range(2000)]
    values = {"a": {s: 1.0 for s in samples}, "b": {s: 1.0 for s in samples[::2]}}
    common = [s for s in samples if s in values["b"]]
    CountedId.comparisons = 0
    column = type("Column", (), {"cell": "psnr"})()
    report._exclusions({}, {"samples": samples}, values, ["a", "b"], common, column)
    assert CountedId.comparisons < 10 * len(samples)  # scanning the list of common samples: about N²/4 = 1,000,000


def test_waiting_for_a_run_never_scans_its_tasks(tmp_path, bench_set, monkeypatch):  # noqa: F811
    scanned = []
    done = Future.done
    monkeypatch.setattr(Future, "done", lambda future: scanned.append(future) or done(future))
    run = RunOptions(methods=["identity", "reinhard"], judges=[], reward=None, metrics=["psnr", "ssim"], cache=str(tmp_path / "c"))
    summary = run_benchmark(tmp_path / "run", run, bench_set=bench_set, log=lambda line: None)
    assert summary.failed == 0 and (tmp_path / "run" / "outputs" / "reinhard" / "s2.png").is_file()
    assert scanned == []  # the completion rule is a count of unfinished tasks


def test_help_and_report_do_not_import_torch(tmp_path):
    """`seminft-bench --help` and `report` load the CLI, the runner, the report and the metric registry: no torch."""
    code = ("import sys, seminft_bench.cli.bench, seminft_bench.bench.report, seminft_bench.bench.runner; "
            "from seminft_bench.bench.metrics import METRIC_NAMES; assert 'torch' not in sys.modules, 'torch imported'")  # fmt: skip
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


def test_a_run_of_classical_methods_and_weight_free_metrics_never_imports_torch(tmp_path):
    """The weight-free metrics are numpy: a run that needs no model loads no torch (two seconds and most of a
    gigabyte per process), from loading the set to writing the report."""
    code = f"""
import sys
from seminft_bench.bench.runner import RunOptions, run_benchmark
options = RunOptions(
    dataset="demo", limit=2, methods=["identity", "reference", "oracle", "reinhard", "mkl", "idt", "histogram"],
    judges=[], reward=None, metrics=["psnr", "ssim", "color", "structure"], cache={str(tmp_path / "cache")!r},
)
summary = run_benchmark({str(tmp_path / "run")!r}, options, log=lambda line: None)
assert summary.cells == 14 and summary.failed == 0 and not summary.not_computed, summary
assert "torch" not in sys.modules, "torch imported"
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "run" / "report.md").is_file()
