"""The tables' statistics: paired bootstrap against scipy and by coverage, the paired difference test,
rank correlations against scipy, and the report's rules (common samples, significance marks, ∞, agreement)."""

import json

import numpy as np
import pytest
import scipy.stats

from seminft_bench.bench import report as report_module
from seminft_bench.bench.report import build_table, judge_agreement, judge_sanity, write_reports
from seminft_bench.bench.results import cell_key, new_record
from seminft_bench.bench.stats import bootstrap_mean, kendall, paired_bootstrap, paired_difference, spearman


def test_bootstrap_interval_covers_the_true_mean_about_95_percent_of_the_time():
    rng = np.random.default_rng(1)
    trials, n, covered = 400, 60, 0
    for trial in range(trials):
        values = rng.exponential(2.0, size=n)  # skewed, true mean 2
        estimate = bootstrap_mean(values, resamples=1000, seed=trial)
        covered += estimate.low <= 2.0 <= estimate.high
    assert 0.90 <= covered / trials <= 0.98  # percentile intervals undercover a little on skewed data


def test_paired_bootstrap_matches_scipys_paired_percentile_bootstrap():
    rng = np.random.default_rng(2)
    shared = rng.normal(size=40)
    a, b = shared + rng.normal(0, 0.1, 40), shared + 0.05 + rng.normal(0, 0.1, 40)
    ours = paired_difference(b, a, resamples=20000, seed=3)
    theirs = scipy.stats.bootstrap((b, a), lambda x, y, axis: np.mean(x - y, axis=axis), paired=True,
                                   n_resamples=20000, method="percentile", rng=4).confidence_interval  # fmt: skip
    assert ours.low == pytest.approx(theirs.low, abs=0.01) and ours.high == pytest.approx(theirs.high, abs=0.01)
    rows = paired_bootstrap(np.stack([a, b]), resamples=20000, seed=3)
    for row, values in zip(rows, (a, b)):
        interval = scipy.stats.bootstrap((values,), np.mean, n_resamples=20000, method="percentile", rng=5).confidence_interval
        assert row.low == pytest.approx(interval.low, abs=0.02) and row.high == pytest.approx(interval.high, abs=0.02)


def test_pairing_detects_a_small_consistent_difference_that_unpaired_intervals_miss():
    rng = np.random.default_rng(3)
    difficulty = rng.normal(0, 1.0, 50)  # samples differ far more than the methods do
    a, b = difficulty + 0.1, difficulty + rng.normal(0, 0.02, 50)
    assert paired_difference(a, b).low > 0  # a is better on (almost) every sample
    separate = [bootstrap_mean(a), bootstrap_mean(b)]
    assert separate[0].low < separate[1].high  # unpaired intervals overlap: they could not tell
    assert paired_difference(a, a).low == paired_difference(a, a).high == 0


def test_infinite_values_stay_infinite_and_two_exact_copies_differ_by_nothing():
    assert bootstrap_mean([np.inf, np.inf]).mean == np.inf and bootstrap_mean([np.inf, np.inf]).low == np.inf
    tie = paired_difference([np.inf, 30.0, 31.0], [np.inf, 30.0, 31.0])
    assert (tie.mean, tie.low, tie.high) == (0.0, 0.0, 0.0)


def test_rank_correlations_equal_scipys():
    rng = np.random.default_rng(4)
    a = rng.integers(0, 6, 30).astype(float)  # judges' integer scores: many ties
    b = np.clip(a + rng.integers(-1, 2, 30), 0, 5)
    assert spearman(a, b) == pytest.approx(scipy.stats.spearmanr(a, b).statistic)
    assert kendall(a, b) == pytest.approx(scipy.stats.kendalltau(a, b).statistic)
    assert spearman([1, 2], [1, 2]) is None and kendall([1, 1, 1], [1, 2, 3]) is None


# ---------------------------------------------------------------- the report's rules


def planted_run(tmp_path, values, *, judges=(), failures=(), metrics=("psnr",)):
    """A run folder from ``values[method][sample] -> {cell: value}``, with valid keys; ``failures``: (sample, method, cell)."""
    methods = list(values)
    samples = sorted({s for per in values.values() for s in per})
    keys = {"methods": {m: f"k-{m}" for m in methods}, "metrics": {n: f"m-{n}" for n in metrics}, "judges": {j: f"j-{j}" for j in judges}}
    info = {"dataset": "planted", "samples": samples, "methods": methods, "judges": [j for j in judges if j != "reward"],
            "reward": "planted-reward" if "reward" in judges else None, "metrics": list(metrics), "keys": keys,
            "dino_threshold": 0.7, "not_computed": {}}  # fmt: skip
    lines = []
    for method, per_sample in values.items():
        for sample, cells in per_sample.items():
            record = new_record(sample, method)
            record["keys"]["generate"] = keys["methods"][method]
            for cell, value in cells.items():
                kind, _, name = cell.partition(":")
                if kind == "metric":
                    record["metrics"][name] = value
                elif name == "reward":
                    record["reward"] = value
                else:
                    record["scores"][name] = value
                if (sample, method, cell) in failures:
                    record["errors"][cell] = "RuntimeError: planted failure"
                else:
                    record["keys"][cell] = cell_key(keys, method, cell)
            lines.append(json.dumps(record))
    (tmp_path / "run.json").write_text(json.dumps(info))
    (tmp_path / "results.jsonl").write_text("\n".join(lines) + "\n")
    return info


def psnr_column(rows):
    return {m: {f"s{i}": {"metric:psnr": v} for i, v in enumerate(per)} for m, per in rows.items()}


def test_methods_are_compared_on_the_samples_every_method_completed(tmp_path):
    rows = {"a": [30.0, 20.0, 10.0, 40.0], "b": [31.0, 21.0, 11.0, 41.0]}
    info = planted_run(tmp_path, psnr_column(rows), failures={("s3", "b", "metric:psnr")})
    table = build_table(report_module.read_records(tmp_path / "results.jsonl"), info)
    a, b = table.cells["a", "psnr"], table.cells["b", "psnr"]
    assert (a.n, b.n) == (3, 3) and a.mean == pytest.approx(20.0) and b.mean == pytest.approx(21.0)  # s3 left out for both
    assert "planted failure" in table.excluded["psnr"]["s3"]
    write_reports(tmp_path)
    assert "psnr / s3: b: RuntimeError: planted failure" in (tmp_path / "report.md").read_text()


def test_bold_only_for_a_significant_lead_else_the_tie_is_marked(tmp_path):
    rng = np.random.default_rng(5)
    base = rng.normal(30, 3, 40)
    clear = {"a": base + 1.0, "b": base, "c": base - 0.5}
    info = planted_run(tmp_path, psnr_column({m: list(v) for m, v in clear.items()}))
    table = build_table(report_module.read_records(tmp_path / "results.jsonl"), info)
    assert table.best["psnr"] == "a" and "psnr" not in table.tied

    noisy = {"a": base + rng.normal(0, 2, 40) + 0.1, "b": base + rng.normal(0, 2, 40), "c": base - 3}
    info = planted_run(tmp_path, psnr_column({m: list(v) for m, v in noisy.items()}))
    table = build_table(report_module.read_records(tmp_path / "results.jsonl"), info)
    assert "psnr" not in table.best and set(table.tied["psnr"]) == {"a", "b"}  # c is significantly worse
    write_reports(tmp_path)
    markdown = (tmp_path / "report.md").read_text()
    assert "excludes 0" in markdown and "_" + f"{table.cells['b', 'psnr'].mean:.2f}" in markdown and "**" not in markdown.split("\n\n")[1]


def test_bounds_are_never_ranked_and_infinite_psnr_shows_as_infinity(tmp_path):
    rows = {"oracle": [np.inf] * 10, "a": [30.0 + i for i in range(10)], "b": [20.0 + i for i in range(10)]}
    info = planted_run(tmp_path, psnr_column(rows))
    table = build_table(report_module.read_records(tmp_path / "results.jsonl"), info)
    assert table.best["psnr"] == "a"
    write_reports(tmp_path)
    assert "| oracle | ∞ [∞, ∞] |" in (tmp_path / "report.md").read_text()
    assert "$\\infty$" in (tmp_path / "report.tex").read_text()


def test_values_under_other_settings_are_never_shown(tmp_path):
    info = planted_run(tmp_path, psnr_column({"a": [30.0, 31.0], "b": [20.0, 21.0]}))
    info["keys"]["metrics"]["psnr"] = "m-psnr-v2"  # the metric's settings changed since these values
    (tmp_path / "run.json").write_text(json.dumps(info))
    table = build_table(report_module.read_records(tmp_path / "results.jsonl"), info)
    assert table.cells.get(("a", "psnr")) is None
    assert table.columns == [] and table.not_computed == {"metric psnr": report_module.NOT_COMPUTED_YET}


def test_a_column_without_any_value_is_listed_only_under_not_computed(tmp_path):
    info = planted_run(tmp_path, psnr_column({"a": [30.0, 31.0], "b": [20.0, 21.0]}), metrics=("psnr", "lpips"))
    info["not_computed"] = {"metric lpips": "LPIPS needs weights missing from the torch cache: PATH"}
    (tmp_path / "run.json").write_text(json.dumps(info))
    table = build_table(report_module.read_records(tmp_path / "results.jsonl"), info)
    assert [c.key for c in table.columns] == ["psnr"] and table.not_computed == info["not_computed"]

    write_reports(tmp_path)
    markdown = (tmp_path / "report.md").read_text()
    assert "| Method | PSNR ↑ | Failed cells |" in markdown and "not computed |" not in markdown
    assert "## Not computed\n\n- metric lpips: LPIPS needs weights missing from the torch cache: PATH" in markdown
    html = (tmp_path / "report.html").read_text()
    assert "<th>LPIPS" not in html and "<li>metric lpips: LPIPS needs weights" in html
    assert "lpips" not in (tmp_path / "summary.csv").read_text() and "LPIPS" not in (tmp_path / "report.tex").read_text()


def test_a_column_with_one_computed_cell_or_a_failed_one_stays(tmp_path):
    values = {"a": {"s0": {"metric:psnr": 30.0, "metric:ssim": 0.5}, "s1": {}}, "b": {"s0": {}, "s1": {}}}
    info = planted_run(tmp_path, values, metrics=("psnr", "ssim"), failures={("s0", "a", "metric:ssim")})
    table = build_table(report_module.read_records(tmp_path / "results.jsonl"), info)
    assert [c.key for c in table.columns] == ["psnr", "ssim"] and table.not_computed == {}
    assert table.cells["a", "psnr"].n == 1 and table.cells["b", "psnr"] is None
    assert table.cells["a", "ssim"] is None and table.failed == {"a": 1, "b": 0}  # the failure is counted, in sight
    write_reports(tmp_path)
    assert "| b | not computed | not computed | 0 |" in (tmp_path / "report.md").read_text()


def test_agreement_leaves_the_bounds_out_and_sanity_shows_them(tmp_path):
    rng = np.random.default_rng(6)
    values = {}
    for method in ("identity", "reference", "x", "y"):
        values[method] = {}
        for i in range(12):
            truth = {"identity": 0, "reference": 5}.get(method, rng.integers(1, 5))
            agree = truth if method in ("identity", "reference") else int(rng.integers(1, 5))  # judges disagree on x, y
            values[method][f"s{i}"] = {"judge:j1": float(truth), "judge:j2": float(agree)}
    info = planted_run(tmp_path, values, judges=("j1", "j2"), metrics=())
    records = report_module.read_records(tmp_path / "results.jsonl")
    (rho, tau, n), = judge_agreement(records, info).values()
    x = [values[m][f"s{i}"]["judge:j1"] for m in ("x", "y") for i in range(12)]
    y = [values[m][f"s{i}"]["judge:j2"] for m in ("x", "y") for i in range(12)]
    assert n == 24 and rho == pytest.approx(scipy.stats.spearmanr(x, y).statistic)
    assert tau == pytest.approx(scipy.stats.kendalltau(x, y).statistic)
    with_bounds = scipy.stats.spearmanr(x + [0] * 12 + [5] * 12, y + [0] * 12 + [5] * 12).statistic
    assert with_bounds > rho + 0.3  # what the bounds would have added
    assert judge_sanity(records, info) == {"j1": {"identity": 0.0, "reference": 5.0}, "j2": {"identity": 0.0, "reference": 5.0}}


def test_too_few_samples_are_never_called_significant(tmp_path):
    rows = {"a": [31.0, 32.0, 33.0, 34.0, 35.0], "b": [30.0, 31.0, 32.0, 33.0, 34.0]}  # a ahead on all 5
    info = planted_run(tmp_path, psnr_column(rows))
    table = build_table(report_module.read_records(tmp_path / "results.jsonl"), info)
    assert paired_difference(rows["a"], rows["b"]).low > 0  # the bootstrap alone would bold it
    assert not table.best and not table.tied
