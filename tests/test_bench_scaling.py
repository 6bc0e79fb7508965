"""The benchmark's costs that grew faster than its samples: each test checks the behaviour that keeps it linear
(operations counted, memory traced), never a wall-clock time."""

import subprocess
import sys
import tracemalloc
from concurrent.futures import Future

import numpy as np
import pytest
from test_bench_runner import bench_set  # noqa: F401 (a fixture)
from test_bench_stats import planted_run

from seminft_bench.bench import report, stats
from seminft_bench.bench.results import new_record, read_records, settings_hash
from seminft_bench.bench.runner import RunOptions, run_benchmark
from seminft_bench.fileio import JsonLines


def one_shot_bootstrap(values: np.ndarray, resamples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The bootstrap by its definition: every replicate's drawn values averaged, all drawn in one array."""
    draws = np.random.default_rng(seed).integers(0, values.shape[1], size=(resamples, values.shape[1]))
    with np.errstate(invalid="ignore"):  # +inf and -inf drawn together
        means = values[:, draws].mean(axis=2)
    return tuple(np.quantile(means, [0.025, 0.975], axis=1, method="inverted_cdf"))


@pytest.mark.parametrize(("samples", "chunk_elements"), [(7, 1 << 22), (300, 300 * 13), (301, 1)])
def test_the_bootstrap_in_chunks_of_counts_equals_its_definition_for_the_same_seed(samples, chunk_elements, monkeypatch):
    """Replicates drawn in chunks and averaged through each replicate's counts of the samples: the same draws and
    the same means (to rounding) as averaging the drawn values, infinities included."""
    monkeypatch.setattr(stats, "BOOTSTRAP_CHUNK_ELEMENTS", chunk_elements)
    values = np.random.default_rng(1).normal(size=(5, samples))
    values[3, ::3] = np.inf  # a perfect PSNR now and then: some replicates draw none
    values[4, ::4], values[4, 1::4] = np.inf, -np.inf  # both infinities: NaN where a replicate draws both
    low, high = one_shot_bootstrap(values, 2000, seed=5)
    estimates = stats.paired_bootstrap(values, 2000, seed=5)
    np.testing.assert_allclose([e.low for e in estimates], low, rtol=1e-12)
    np.testing.assert_allclose([e.high for e in estimates], high, rtol=1e-12)


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
from seminft_bench.fileio import JsonLines
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


def planted_report(tmp_path, methods: int, samples: int, metrics=("psnr", "ssim")):
    """A finished run folder of ``methods`` close-run methods × ``samples`` samples (no bounds, no judges)."""
    rng = np.random.default_rng(0)
    values = {f"m{i}": {f"s{j}": {f"metric:{n}": float(rng.normal(30 + 0.01 * i, 1)) for n in metrics} for j in range(samples)}
              for i in range(methods)}  # fmt: skip
    return planted_run(tmp_path, values, metrics=metrics)


def test_a_report_reads_each_columns_values_once(tmp_path, monkeypatch):
    """The table, the plots and the page share one `current_values` per method and column (each a pass over the run)."""
    planted_report(tmp_path, methods=3, samples=12)
    calls = []
    current_values = report.current_values
    monkeypatch.setattr(report, "current_values", lambda *args: calls.append(args[2:]) or current_values(*args))
    report.write_reports(tmp_path)
    assert len(calls) == len(set(calls)) == 3 * 2


def test_a_columns_ranks_come_from_one_bootstrap(tmp_path, monkeypatch):
    """Its intervals from one bootstrap, the best's lead over every other method from one more (not one per method):
    each a full pass of 2,000 replicates over the samples. The ties are what one test per method finds."""
    info = planted_report(tmp_path, methods=6, samples=30, metrics=("psnr",))
    records = report.read_records(tmp_path / "results.jsonl")
    calls = []
    bootstrap = stats.paired_bootstrap
    counted = lambda *args, **kwargs: calls.append(1) or bootstrap(*args, **kwargs)  # noqa: E731
    monkeypatch.setattr(stats, "paired_bootstrap", counted)
    monkeypatch.setattr(report, "paired_bootstrap", counted)
    table = report.build_table(records, info)
    assert len(calls) == 2
    monkeypatch.undo()
    rows = {m: np.array([records[s, m]["metrics"]["psnr"] for s in info["samples"]]) for m in info["methods"]}
    best = table.tied["psnr"][0]
    assert table.tied["psnr"] == [best] + [
        m for m in sorted(rows, key=lambda m: -rows[m].mean())[1:] if stats.paired_difference(rows[best], rows[m]).low <= 0
    ]


def test_the_failed_cells_of_a_method_take_one_pass_over_its_records(tmp_path):
    class CountedRecords(dict):
        lookups = 0

        def get(self, key, default=None):
            CountedRecords.lookups += 1
            return super().get(key, default)

    info = planted_report(tmp_path, methods=1, samples=50)
    records = CountedRecords(report.read_records(tmp_path / "results.jsonl"))
    assert report._failed_cells(records, info, "m0") == 0
    assert CountedRecords.lookups == 50  # not once per sample and cell (generate, psnr, ssim)


def test_the_scatter_draws_a_bounded_number_of_dots_and_every_samples_mean(monkeypatch):
    from matplotlib.axes import Axes

    drawn = []
    scatter = Axes.scatter
    monkeypatch.setattr(Axes, "scatter", lambda axes, x, y, **kw: drawn.append((np.asarray(x), np.asarray(y))) or scatter(axes, x, y, **kw))
    samples = 3 * report.MAX_PLOTTED_DOTS
    color = {f"s{i}": float(i) for i in range(samples)}
    structure = {f"s{i}": 1.0 - i / samples for i in range(samples)}
    assert report._tradeoff_plot({"color": {"a": color}, "structure": {"a": structure}})
    (dots_x, _), (mean_x, mean_y) = drawn
    assert len(dots_x) == report.MAX_PLOTTED_DOTS and dots_x.min() == 0 and dots_x.max() == samples - 1
    assert (mean_x[0], mean_y[0]) == pytest.approx((np.mean(list(color.values())), np.mean(list(structure.values()))))


def results_like(path, samples: int, methods=("identity", "reinhard", "mkl", "ours")):
    """A compacted results.jsonl of ``samples`` × ``methods``, four metrics each, as a finished run writes it."""
    rng = np.random.default_rng(0)
    records = []
    for i in range(samples):
        for method in methods:
            record = new_record(f"{i:06d}", method)
            record["output"] = f"outputs/{method}/{i:06d}.png"
            record["keys"]["generate"] = settings_hash({"method": method})
            for name in ("psnr", "ssim", "color", "structure"):
                record["metrics"][name] = float(rng.normal())
                record["keys"][f"metric:{name}"] = settings_hash({"method": method, "metric": name})
            records.append(record)
    JsonLines(path).rewrite(records)
    return path


def test_reading_results_holds_a_line_at_a_time_not_the_files_bytes(tmp_path):
    """Beyond the records it returns, a read holds a fraction of the file: once it held the file's bytes three times
    over (read, split into lines, joined again), 3.77 GB of a 4 GB report at 100,000 samples × 8 methods."""
    path = results_like(tmp_path / "results.jsonl", 1000)
    tracemalloc.start()
    try:
        records = JsonLines(path).read()
        held, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(records) == 4000
    assert peak - held < path.stat().st_size / 2


def test_records_read_back_share_their_repeated_strings(tmp_path):
    """Each key, method name and settings hash is one string object across all records, not one copy per record."""
    records = read_records(results_like(tmp_path / "results.jsonl", 3))
    a, b, c = records["000000", "mkl"], records["000001", "mkl"], records["000001", "ours"]
    for name in ("keys", "metrics"):
        assert all(x is y for x, y in zip(a[name], b[name])) and all(x is y for x, y in zip(a[name], c[name]))
    assert a["method"] is b["method"] and b["sample"] is c["sample"]
    assert all(a["keys"][cell] is b["keys"][cell] for cell in a["keys"])


def test_compacting_results_writes_a_line_at_a_time(tmp_path):
    """A compaction holds a fraction of the file beyond its records: once the file's text and its bytes, both whole
    (0.7 GB more at the end of a run of 100,000 samples × 8 methods)."""
    path = results_like(tmp_path / "results.jsonl", 1000)
    records = JsonLines(path).read()
    tracemalloc.start()
    try:
        JsonLines(path).rewrite(records)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < path.stat().st_size / 2
    assert JsonLines(path).read() == records and not list(tmp_path.glob(".*.tmp"))


def test_read_records_completes_the_records_read_not_copies_of_them(tmp_path, monkeypatch):
    """A copy of every record, built while the records read were still held, added 0.36 GB to a report's peak at
    100,000 samples × 8 methods."""
    path = results_like(tmp_path / "results.jsonl", 2)
    with path.open("a") as f:
        f.write('{"sample": "000000", "method": "old", "metrics": {"psnr": 1.5}}\n')  # written before some fields existed
    read = JsonLines.read
    parsed = []
    monkeypatch.setattr(JsonLines, "read", lambda store: parsed.extend(read(store)) or parsed)
    records = read_records(path)
    assert len(records) == len(parsed) == 9
    assert all(records[r["sample"], r["method"]] is r for r in parsed)
    assert records["000000", "old"] == {**new_record("000000", "old"), "metrics": {"psnr": 1.5}}
