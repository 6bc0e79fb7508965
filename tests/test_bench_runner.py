"""`seminft-bench run` end to end on a small in-memory set: cells, resume, added judges, failures, reports."""

import json
from dataclasses import replace

import numpy as np
import pytest
import skimage.data
from PIL import Image

from seminft_bench.bench import runner as runner_module
from seminft_bench.bench.methods import Method, get_method
from seminft_bench.bench.report import write_reports
from seminft_bench.bench.results import read_records
from seminft_bench.bench.runner import RunOptions, run_benchmark
from seminft_bench.bench.samples import BenchSet, Sample
from seminft_bench.imaging import encode_png, to_array
from seminft_bench.presets import apply_lut, builtin_presets
from seminft_bench.vlm.testserver import Answer, PlantedServer

OPENAI_KEY = "sk-runner-test-0123456789"
GEMINI_KEY = "gm-runner-test-0123456789"
METHODS = ["identity", "reference", "oracle"]


@pytest.fixture(scope="module")
def bench_set():
    photos = [skimage.data.astronaut()[::8, ::8], skimage.data.coffee()[::8, ::8], skimage.data.chelsea()[::6, ::6]]
    presets = builtin_presets()
    samples = []
    for i, photo in enumerate(photos):
        lut = presets[3 * i + 1].to_lut()
        reference = apply_lut(photos[(i + 1) % 3], lut)
        samples.append(Sample(f"s{i}", encode_png(photo), encode_png(reference), encode_png(apply_lut(photo, lut)), presets[3 * i + 1]))
    return BenchSet("mini", samples)


def planted_score(seen) -> int:
    """5 when the prediction has the reference's mean colour, less the further it is: a judge with taste."""
    reference, prediction = (to_array(image, np.float32).mean(axis=(0, 1)) for image in seen.images[:2])
    return int(np.clip(round(5 - 20 * np.abs(reference - prediction).mean()), 0, 5))


def plan(seen):
    score = planted_score(seen)
    if seen.reward:
        return Answer(str(score), logprobs={str(score): 0.0}, output_tokens=1)
    return Answer(json.dumps({"score": score, "reasoning": f"planted {score}"}))


@pytest.fixture
def server(monkeypatch, tmp_path):
    monkeypatch.setenv("OPENAI_API_KEY", OPENAI_KEY)
    monkeypatch.setenv("GEMINI_API_KEY", GEMINI_KEY)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with PlantedServer(plan) as planted:
        config = tmp_path / "judges.toml"
        config.write_text(
            f'[judges.gpt-4o]\nbase_url = "{planted.openai_url}"\n'
            f'[judges.\"gemini-2.5-flash\"]\nbase_url = "{planted.gemini_url}"\n'
            f'[judges.\"qwen3-vl-8b\"]\nbase_url = "{planted.openai_url}"\n'
        )
        planted.config = str(config)
        yield planted


def options(server, tmp_path, **overrides):
    base = dict(
        methods=METHODS, judges=["gpt-4o"], reward="qwen3-vl-8b", metrics=["psnr", "ssim", "success", "color", "structure"],
        cache=str(tmp_path / "cache"), judge_config=server.config, concurrency=4,
    )
    return RunOptions(**{**base, **overrides})


def lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_run_fills_every_cell_and_reports_not_computed(tmp_path, server, bench_set):
    out = tmp_path / "run"
    summary = run_benchmark(out, options(server, tmp_path), bench_set=bench_set, log=lambda line: None)

    records = lines(out / "results.jsonl")
    assert sorted((r["sample"], r["method"]) for r in records) == sorted((s.name, m) for s in bench_set.samples for m in METHODS)
    for record in records:
        output = out / record["output"]
        assert output.exists() and Image.open(output).size == bench_set.samples[int(record["sample"][1])].image("source").size
        assert record["scores"]["gpt-4o"] is not None and record["reward"] is not None
        assert record["reasoning"]["gpt-4o"].startswith("planted")
        assert "dino" not in record["metrics"]  # no DINO weights here: absent, never 0
    by_key = {(r["sample"], r["method"]): r for r in records}
    for sample in bench_set.samples:
        assert by_key[sample.name, "reference"]["scores"]["gpt-4o"] == 5  # the reference has the reference's colours
        assert by_key[sample.name, "oracle"]["metrics"]["ssim"] == pytest.approx(1.0, abs=1e-6)
    assert server.calls == 2 * len(records)  # one judge call and one reward call per cell
    assert "metric dino" in summary.not_computed and summary.failed == 0

    report = (out / "report.md").read_text()
    header = next(line for line in report.splitlines() if line.startswith("| Method"))
    assert "gpt-4o" in header and "Reward" in header and "Success" not in header  # success needs DINO: no value
    assert "- metric dino: DINO" in report and "- metric success: needs dino" in report
    csv_text = (out / "summary.csv").read_text()
    assert "psnr_mean" in csv_text and "success_mean" not in csv_text
    html = (out / "report.html").read_text()
    assert "inputs/reference/s0.png" in html and "outputs/oracle/s0.png" in html and "data:image/png;base64" in html
    assert "\\textbf" in (out / "report.tex").read_text() or "identity" in (out / "report.tex").read_text()
    assert (out / "inputs" / "target" / "s2.png").exists()


def test_rerun_makes_no_calls_and_an_added_judge_only_its_own(tmp_path, server, bench_set):
    out = tmp_path / "run"
    run_benchmark(out, options(server, tmp_path), bench_set=bench_set, log=lambda line: None)
    first = (out / "results.jsonl").read_text()
    server.reset_counts()

    run_benchmark(out, options(server, tmp_path), bench_set=bench_set, log=lambda line: None)
    assert server.calls == 0
    assert (out / "results.jsonl").read_text() == first

    methods = [*METHODS, "reinhard"]  # agreement is measured on non-bound methods only
    run_benchmark(out, options(server, tmp_path, methods=methods, judges=["gpt-4o", "gemini-2.5-flash"]), bench_set=bench_set, log=lambda line: None)
    records = lines(out / "results.jsonl")
    # the bounds' cells: only the new judge's; reinhard's: all three scorers
    assert server.calls == len(bench_set) * (len(METHODS) + 3) and len(records) == len(bench_set) * len(methods)
    assert all(r["scores"]["gemini-2.5-flash"] is not None for r in records)
    assert "gpt-4o vs gemini-2.5-flash" in (out / "report.md").read_text()


def test_a_killed_run_resumes_without_duplicates(tmp_path, server, bench_set):
    out = tmp_path / "run"
    run_benchmark(out, options(server, tmp_path), bench_set=bench_set, log=lambda line: None)
    results = out / "results.jsonl"
    complete = read_records(results)
    # What a kill leaves: a lost output, a record written twice, and a torn last line.
    (out / "outputs" / "identity" / "s1.png").unlink()
    text = results.read_text().splitlines(keepends=True)
    results.write_text("".join(text + text[:2]) + text[3][:25])

    with pytest.warns(UserWarning, match="dropping an incomplete"):
        run_benchmark(out, options(server, tmp_path), bench_set=bench_set, log=lambda line: None)
    records = lines(results)
    assert len(records) == len({(r["sample"], r["method"]) for r in records}) == len(complete)
    assert (out / "outputs" / "identity" / "s1.png").exists()


class Flaky(Method):
    """Fails on sample s1 until healed."""

    name = "flaky"
    healed = False

    def transfer(self, source, reference):
        if not Flaky.healed and source.size == (75, 50):
            raise RuntimeError("out of memory on this one")
        return source


def test_failed_cells_are_recorded_counted_and_retried(tmp_path, server, bench_set, monkeypatch):
    real_get_method = get_method
    monkeypatch.setitem(runner_module.REGISTRY, "flaky", "test_bench_runner:Flaky")
    monkeypatch.setattr(
        runner_module, "get_method", lambda name, context=None: Flaky() if name == "flaky" else real_get_method(name, context)
    )
    out = tmp_path / "run"
    flaky_size = bench_set.samples[1].image("source").size
    assert flaky_size == (75, 50)
    run = options(server, tmp_path, methods=["flaky", "identity"], judges=[], reward=None)
    summary = run_benchmark(out, run, bench_set=bench_set, log=lambda line: None)
    record = read_records(out / "results.jsonl")["s1", "flaky"]
    assert "out of memory" in record["errors"]["generate"] and record["output"] is None
    assert summary.failed == 1
    assert "| flaky |" in (out / "report.md").read_text() and "| 1 |" in (out / "report.md").read_text()

    Flaky.healed = True
    summary = run_benchmark(out, run, bench_set=bench_set, log=lambda line: None)
    assert summary.failed == 0 and read_records(out / "results.jsonl")["s1", "flaky"]["metrics"]["psnr"] > 0


def test_unavailable_judges_and_methods_are_skipped_with_one_line(tmp_path, bench_set, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    logged = []
    run = RunOptions(methods=["identity", "predictions:" + str(tmp_path / "nowhere")], judges=["gpt-4o"], reward=None,
                     metrics=["psnr"], cache=str(tmp_path / "cache"))  # fmt: skip
    summary = run_benchmark(tmp_path / "run", run, bench_set=bench_set, log=logged.append)
    assert any("OPENAI_API_KEY" in line for line in logged)
    assert set(summary.not_computed) == {"judge gpt-4o", "method predictions:" + str(tmp_path / "nowhere")}
    table = (tmp_path / "run" / "report.md").read_text()
    header = next(line for line in table.splitlines() if line.startswith("| Method"))
    assert "gpt-4o" not in header and "- judge gpt-4o: " in table and "OPENAI_API_KEY" in table


class Greedy(Method):
    """A GPU method whose model never fits: loading it raises PyTorch's out-of-memory error, as CUDA would."""

    name = "greedy"
    runs_on = "gpu"

    def prepare(self, bench_set):
        import torch

        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB\n(more lines)")

    def transfer(self, source, reference):
        return source.copy()


class Light(Greedy):
    """A GPU method that loads."""

    name = "light"

    def prepare(self, bench_set):
        pass


class Buggy(Greedy):
    name = "buggy"

    def prepare(self, bench_set):
        raise RuntimeError("a bug in the method")


def test_a_model_that_does_not_fit_is_not_computed_and_a_bug_still_stops_the_run(tmp_path, bench_set, monkeypatch):
    for cls in (Greedy, Light, Buggy):
        register(monkeypatch, cls.name, cls)
    run = RunOptions(methods=["identity", "greedy"], judges=[], reward=None, metrics=["psnr"], cache=str(tmp_path / "cache"))
    summary = run_benchmark(tmp_path / "run", run, bench_set=bench_set, log=lambda line: None)
    assert summary.not_computed == {"method greedy": "its model does not fit in memory (CUDA out of memory. Tried to allocate 20.00 GiB)"}
    assert summary.failed == 0 and summary.cells == len(bench_set)

    run = replace(run, methods=["identity", "light", "greedy"])  # another model is loaded: say it may be in the way
    summary = run_benchmark(tmp_path / "run", run, bench_set=bench_set, log=lambda line: None)
    assert summary.not_computed["method greedy"].endswith("20.00 GiB); it may fit without light (run it alone into the same folder)")
    assert summary.failed == 0 and summary.cells == 2 * len(bench_set)

    with pytest.raises(RuntimeError, match="a bug in the method"):
        run_benchmark(tmp_path / "run", replace(run, methods=["identity", "buggy"]), bench_set=bench_set, log=lambda line: None)


def test_report_rebuilds_from_results_alone(tmp_path, server, bench_set):
    out = tmp_path / "run"
    run_benchmark(out, options(server, tmp_path), bench_set=bench_set, log=lambda line: None)
    before = (out / "report.md").read_text()
    for name in ("report.md", "report.html", "summary.csv", "report.tex"):
        (out / name).unlink()
    files = write_reports(out)
    assert set(files) == {"csv", "markdown", "latex", "html"} and (out / "report.md").read_text() == before


def test_cli_runs_the_demo_set_and_rebuilds_the_report(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from seminft_bench.cli import bench

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    out = tmp_path / "run"
    args = ["run", "--dataset", "demo", "--method", "identity,oracle,histogram", "--metrics", "psnr,ssim",
            "--judges", "gpt-4o", "--reward", "", "--limit", "3", "--out", str(out), "--cache", str(tmp_path / "cache")]  # fmt: skip
    result = CliRunner().invoke(bench.app, args)
    assert result.exit_code == 0, result.output
    assert "not computed: judge gpt-4o" in result.output and "report.html" in result.output
    assert len(lines(out / "results.jsonl")) == 9
    (out / "report.html").unlink()
    result = CliRunner().invoke(bench.app, ["report", str(out)])
    assert result.exit_code == 0 and (out / "report.html").exists()
    result = CliRunner().invoke(bench.app, ["report", str(tmp_path)])
    assert result.exit_code == 2 and "no run.json" in result.output


# ---------------------------------------------------------------- cells keyed by their settings


class Tinted(Method):
    """A method with one setting: how much it warms the source (part of its cells' key)."""

    name = "tinted"
    strength = 0.1

    def settings(self):
        return {**super().settings(), "strength": Tinted.strength}

    def transfer(self, source, reference):
        array = to_array(source, np.float32)
        array[..., 0] = np.clip(array[..., 0] + Tinted.strength, 0, 1)
        return Image.fromarray((array * 255).round().astype(np.uint8))


def register(monkeypatch, name, cls):
    monkeypatch.setitem(runner_module.REGISTRY, name, f"test_bench_runner:{cls.__name__}")


def test_a_changed_method_setting_remakes_only_its_cells(tmp_path, server, bench_set, monkeypatch):
    register(monkeypatch, "tinted", Tinted)
    out = tmp_path / "run"
    run = options(server, tmp_path, methods=["identity", "tinted"], metrics=["psnr"])
    run_benchmark(out, run, bench_set=bench_set, log=lambda line: None)
    before = read_records(out / "results.jsonl")
    server.reset_counts()

    monkeypatch.setattr(Tinted, "strength", 0.3)
    run_benchmark(out, run, bench_set=bench_set, log=lambda line: None)
    after = read_records(out / "results.jsonl")
    assert server.calls == 2 * len(bench_set)  # tinted's judge and reward cells only: identity's are reused
    for sample in bench_set.samples:
        assert after[sample.name, "identity"] == before[sample.name, "identity"]
        assert after[sample.name, "tinted"]["metrics"]["psnr"] < before[sample.name, "tinted"]["metrics"]["psnr"]
        target = to_array(sample.image("target"), np.float32)
        made = to_array(Image.open(out / after[sample.name, "tinted"]["output"]), np.float32)
        independent = 10 * np.log10(1 / np.mean((made - target) ** 2))
        assert after[sample.name, "tinted"]["metrics"]["psnr"] == pytest.approx(independent, abs=1e-4)


def test_a_new_reward_model_or_judge_endpoint_recomputes_its_column(tmp_path, server, bench_set):
    out = tmp_path / "run"
    run_benchmark(out, options(server, tmp_path, metrics=[]), bench_set=bench_set, log=lambda line: None)
    cells = len(bench_set) * len(METHODS)

    def always(score):
        return lambda seen: Answer(str(score), logprobs={str(score): 0.0}) if seen.reward else Answer(json.dumps({"score": score, "reasoning": "other"}))

    with PlantedServer(always(1)) as other:
        config = tmp_path / "other.toml"
        config.write_text(
            f'[judges.gpt-4o]\nbase_url = "{other.openai_url}"\n'  # same judge name and model, another endpoint
            f'[judges.other-reward]\nprovider = "openai"\nmodel = "other"\nbase_url = "{other.openai_url}"\napi_key_env = ["OPENAI_API_KEY"]\n'
        )
        server.reset_counts()
        run_benchmark(out, options(server, tmp_path, metrics=[], judge_config=str(config), reward="other-reward"), bench_set=bench_set, log=lambda line: None)
        assert other.calls == 2 * cells and server.calls == 0  # never served from the first endpoint's replies
    records = lines(out / "results.jsonl")
    assert all(r["scores"]["gpt-4o"] == 1 and r["reward"] == pytest.approx(1.0) for r in records)
    info = json.loads((out / "run.json").read_text())
    assert info["reward"] == "other-reward" and info["settings"]["judges"]["gpt-4o"]["endpoint"].startswith(other.openai_url)
    report = (out / "report.md").read_text()
    assert "| identity | 1.000 [1.000, 1.000] | 0.200 [0.200, 0.200] |" in report  # judge 1, reward 1/5
    assert "other-reward by Eq. 4" in report


def test_a_new_dino_threshold_recomputes_success_and_the_report_uses_it(tmp_path, bench_set, tiny_dino):
    out = tmp_path / "run"
    base = dict(methods=["identity", "reference"], judges=[], reward=None, metrics=["success"], dino_model=tiny_dino)
    run_benchmark(out, RunOptions(dino_threshold=0.0, **base), bench_set=bench_set, log=lambda line: None)
    similarity = {k: r["metrics"]["dino"] for k, r in read_records(out / "results.jsonl").items()}
    threshold = float(np.median(list(similarity.values())))
    run_benchmark(out, RunOptions(dino_threshold=threshold, **base), bench_set=bench_set, log=lambda line: None)
    records = read_records(out / "results.jsonl")
    for key, record in records.items():
        assert record["metrics"]["success"] == (similarity[key] > threshold)
    reference_ratio = np.mean([similarity[s.name, "reference"] > threshold for s in bench_set.samples])
    summary = {row[0]: row for row in (line.split(",") for line in (out / "summary.csv").read_text().splitlines())}
    column = summary["method"].index("success_mean")
    assert float(summary["reference"][column]) == pytest.approx(reference_ratio) and float(summary["identity"][column]) == 1
    assert f"exceeds {threshold}" in (out / "report.md").read_text()


def test_a_run_folder_belongs_to_one_dataset(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from seminft_bench.cli import bench

    out = tmp_path / "run"
    args = ["run", "--dataset", "demo", "--method", "identity", "--metrics", "psnr,ssim", "--judges", "", "--reward", "",
            "--limit", "2", "--out", str(out), "--cache", str(tmp_path / "cache")]  # fmt: skip
    assert CliRunner().invoke(bench.app, args).exit_code == 0
    colour_psnr = read_records(out / "results.jsonl")
    result = CliRunner().invoke(bench.app, [*args, "--variant", "bw"])
    assert result.exit_code == 2 and "another dataset" in result.output and "--overwrite" in result.output
    assert "'demo+bw' now" in result.output
    assert read_records(out / "results.jsonl") == colour_psnr  # nothing touched

    result = CliRunner().invoke(bench.app, [*args, "--variant", "bw", "--overwrite"])
    assert result.exit_code == 0, result.output
    grey = read_records(out / "results.jsonl")
    for key, record in grey.items():
        assert record["metrics"]["psnr"] < colour_psnr[key]["metrics"]["psnr"]  # the grey source is further from the target
    assert json.loads((out / "run.json").read_text())["dataset"] == "demo+bw"


def test_a_sample_with_other_images_under_the_same_name_is_refused(tmp_path, bench_set):
    out = tmp_path / "run"
    run = RunOptions(methods=["identity"], judges=[], reward=None, metrics=["psnr"], cache=str(tmp_path / "cache"))
    run_benchmark(out, run, bench_set=bench_set, log=lambda line: None)
    first = bench_set.samples[0]
    changed = BenchSet("mini", [Sample(first.name, first.reference, first.source, first.target), *bench_set.samples[1:]])
    with pytest.raises(runner_module.RunFolderError, match=r"1 sample\(s\) have other images than there: s0"):
        run_benchmark(out, run, bench_set=changed, log=lambda line: None)


def test_unknown_names_fail_before_any_work(tmp_path):
    out = tmp_path / "run"
    run = RunOptions(methods=["identity", "nosuch"], judges=["gpt-5-judge"], reward=None, metrics=["psnr", "fid"])
    with pytest.raises(ValueError) as error:
        run_benchmark(out, run, log=lambda line: None)
    assert all(name in str(error.value) for name in ("'nosuch'", "'gpt-5-judge'", "'fid'"))
    assert not out.exists()


def test_limit_into_a_larger_folder_reports_only_the_current_samples(tmp_path, bench_set):
    out = tmp_path / "run"
    run = RunOptions(methods=["identity", "reinhard"], judges=[], reward=None, metrics=["ssim"], cache=str(tmp_path / "cache"))
    run_benchmark(out, run, bench_set=bench_set, log=lambda line: None)
    run_benchmark(out, run, bench_set=BenchSet("mini", bench_set.samples[:2]), log=lambda line: None)
    csv_rows = (out / "summary.csv").read_text().splitlines()
    assert csv_rows[1].startswith("identity,") and csv_rows[1].endswith(",2")  # n = 2, not 3
    assert len(read_records(out / "results.jsonl")) == 6  # the third sample's records are kept, not reported


def test_a_rerun_removes_the_half_written_images_a_killed_run_left(tmp_path, bench_set):
    out = tmp_path / "run"
    run = RunOptions(methods=["identity"], judges=[], reward=None, metrics=["ssim"], cache=str(tmp_path / "cache"))
    run_benchmark(out, run, bench_set=bench_set, log=lambda line: None)
    leftover = out / "outputs" / "identity" / ".s0.png.k1ll3d.tmp"  # what atomic_write_bytes leaves when killed
    leftover.write_bytes(b"half a png")
    run_benchmark(out, run, bench_set=bench_set, log=lambda line: None)
    assert not leftover.exists() and (out / "outputs" / "identity" / "s0.png").is_file()


# ---------------------------------------------------------------- a run always ends


class NotAnImage(Method):
    name = "not-an-image"

    def transfer(self, source, reference):
        return np.zeros((4, 4, 3))


def raising_metric(error):
    from seminft_bench.bench.metrics import Metric

    def compute(pred, other, settings):
        raise error

    return Metric("psnr", "PSNR", "target", True, compute)


@pytest.mark.timeout(120)
def test_an_exception_in_any_stage_is_a_failed_cell_and_the_run_ends(tmp_path, server, bench_set, monkeypatch):
    from seminft_bench.bench import metrics
    from seminft_bench.vlm import Judge

    register(monkeypatch, "not-an-image", NotAnImage)
    monkeypatch.setitem(metrics.METRICS, "psnr", raising_metric(KeyError("psnr")))
    real_score_pairs = Judge.score_pairs

    def score_pairs(self, pairs):
        pairs = list(pairs)
        if self.mode == "reward" and pairs[0].name.endswith("/s1"):
            raise RuntimeError(f"judge crashed with key {OPENAI_KEY}")
        return real_score_pairs(self, pairs)

    monkeypatch.setattr(Judge, "score_pairs", score_pairs)
    out = tmp_path / "run"
    run = options(server, tmp_path, methods=["identity", "not-an-image"], metrics=["psnr", "ssim"])
    summary = run_benchmark(out, run, bench_set=bench_set, log=lambda line: None)

    records = read_records(out / "results.jsonl")
    for sample in bench_set.samples:
        identity = records[sample.name, "identity"]
        assert identity["errors"]["metric:psnr"] == "KeyError: 'psnr'" and "metric:ssim" not in identity["errors"]
        assert 0 < identity["metrics"]["ssim"] < 1  # the other metric of the same output still done
        assert "returned ndarray" in records[sample.name, "not-an-image"]["errors"]["generate"]
    crashed = records["s1", "identity"]["errors"]["judge:reward"]
    assert "judge crashed" in crashed and OPENAI_KEY not in crashed  # redacted
    assert summary.failed == 3 + 3 + 1
    assert (out / "report.md").exists()


def test_a_failed_write_is_counted_and_the_run_still_ends(tmp_path, bench_set, monkeypatch):
    from seminft_bench.fileio import JsonLines

    real_append = JsonLines.append

    def append(self, record):
        if record["method"] == "reinhard" and record["sample"] == "s2":
            raise OSError(28, "No space left on device")
        real_append(self, record)

    monkeypatch.setattr(JsonLines, "append", append)
    logged = []
    run = RunOptions(methods=["identity", "reinhard"], judges=[], reward=None, metrics=["psnr"], cache=str(tmp_path / "cache"))
    summary = run_benchmark(tmp_path / "run", run, bench_set=bench_set, log=logged.append)
    assert summary.failed == 1 and any("No space left" in line and "not saved" in line for line in logged)


def test_a_metric_is_one_registry_entry_for_runner_report_and_cli(tmp_path, bench_set, monkeypatch):
    from typer.testing import CliRunner

    from seminft_bench.bench import metrics
    from seminft_bench.cli import bench

    def brightness_gap(pred, source, settings):
        return abs(to_array(pred, np.float32).mean() - to_array(source, np.float32).mean())

    monkeypatch.setitem(metrics.METRICS, "brightness", metrics.Metric("brightness", "Brightness gap", "source", False, brightness_gap))
    monkeypatch.setattr(metrics, "METRIC_NAMES", tuple(metrics.METRICS))
    monkeypatch.setattr(runner_module, "METRIC_NAMES", tuple(metrics.METRICS))
    out = tmp_path / "run"
    run = RunOptions(methods=["identity", "reference"], judges=[], reward=None, metrics=["brightness"], cache=str(tmp_path / "cache"))
    run_benchmark(out, run, bench_set=bench_set, log=lambda line: None)
    records = read_records(out / "results.jsonl")
    assert all(records[s.name, "identity"]["metrics"]["brightness"] == 0 for s in bench_set.samples)
    assert "| Method | Brightness gap ↓ |" in (out / "report.md").read_text()
    args = ["run", "--dataset", "demo", "--limit", "1", "--method", "identity", "--metrics", "brightness,nosuch",
            "--judges", "", "--reward", "", "--out", str(tmp_path / "cli")]  # fmt: skip
    result = CliRunner().invoke(bench.app, args)
    assert result.exit_code == 2 and "unknown metric 'nosuch'" in result.output and "'brightness'" not in result.output


def test_the_cli_exits_non_zero_when_cells_failed(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from seminft_bench.bench import metrics
    from seminft_bench.cli import bench

    monkeypatch.setitem(metrics.METRICS, "psnr", raising_metric(ZeroDivisionError("planted")))
    args = ["run", "--dataset", "demo", "--limit", "2", "--method", "identity", "--metrics", "psnr,ssim",
            "--judges", "", "--reward", "", "--out", str(tmp_path / "run"), "--cache", str(tmp_path / "cache")]  # fmt: skip
    result = CliRunner().invoke(bench.app, args)
    assert result.exit_code == 1 and "2 cells failed" in result.output and "results.jsonl" in result.output
    assert (tmp_path / "run" / "report.html").exists()


def test_a_second_run_into_a_folder_being_written_is_refused(tmp_path, bench_set):
    from seminft_bench.fileio import FolderLock, FolderLocked

    out = tmp_path / "run"
    run = RunOptions(methods=["identity"], judges=[], reward=None, metrics=["psnr"], cache=str(tmp_path / "cache"))
    with FolderLock(out, job="benchmark run"):  # what another live `run` holds
        with pytest.raises(FolderLocked, match="being written by another benchmark run"):
            run_benchmark(out, run, bench_set=bench_set, log=lambda line: None)
        assert not (out / "results.jsonl").exists()
    assert run_benchmark(out, run, bench_set=bench_set, log=lambda line: None).failed == 0
