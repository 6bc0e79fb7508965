"""`seminft-bench run --executor ray` on a local Ray instance: the same cells as a local run, a lost worker loses
only its cell in flight, and a GPU method runs in its actor with the keys a local run gives it."""

import json
import os
import signal
import sys

import pytest

from seminft_bench.bench import runner as runner_module
from seminft_bench.bench.methods import Method
from seminft_bench.bench.results import read_records
from seminft_bench.bench.runner import RunOptions, run_benchmark
from seminft_bench.pipelines.executors import ray_session
from test_bench_runner import bench_set  # noqa: F401 (the same mini set, a fixture)

METHODS = ["identity", "oracle", "reinhard", "mkl"]
METRICS = ["psnr", "ssim", "color", "structure"]


@pytest.fixture(scope="module")
def cluster():
    """One local Ray for the module: two CPUs and two declared GPUs (the tiny `ours` runs on CPU in its actors)."""
    ray = pytest.importorskip("ray")
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # this module's methods travel with their code
    try:
        with pytest.MonkeyPatch.context() as patch:  # and the GPU workers import it by name, as they would a plugin's
            patch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [os.path.dirname(__file__), os.environ.get("PYTHONPATH")])))
            with ray_session(num_cpus=2, num_gpus=2):  # `run_benchmark` finds it connected and leaves it running
                yield
    finally:
        ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


def common_options(folder):
    return {"methods": METHODS, "judges": [], "reward": None, "metrics": METRICS, "cache": str(folder / "cache")}


def run(out, bench_set, **overrides):
    return run_benchmark(out, RunOptions(**{**common_options(out.parent), **overrides}), bench_set=bench_set, log=lambda line: None)


def assert_same_cells(out, expected):
    """``out`` holds exactly ``expected``'s records (keys, metric values, errors), each once, and the same PNG bytes."""
    records = read_records(out / "results.jsonl")
    assert records == read_records(expected / "results.jsonl")
    assert len((out / "results.jsonl").read_text().splitlines()) == len(records)  # one line per (sample, method)
    for record in records.values():
        assert (out / record["output"]).read_bytes() == (expected / record["output"]).read_bytes()
    assert json.loads((out / "run.json").read_text())["keys"] == json.loads((expected / "run.json").read_text())["keys"]


def test_a_ray_run_equals_a_local_run_cell_for_cell(cluster, tmp_path, bench_set):
    local = run(tmp_path / "local", bench_set)
    remote = run(tmp_path / "ray", bench_set, executor="ray")
    assert local.failed == remote.failed == 0 and remote.cells == len(bench_set) * len(METHODS)
    assert_same_cells(tmp_path / "ray", tmp_path / "local")
    assert all(set(r["metrics"]) == set(METRICS) for r in read_records(tmp_path / "ray" / "results.jsonl").values())


class Killer(Method):
    """Copies the source, but the first time it meets sample s1 it kills the process it runs in: a worker lost mid-cell."""

    name = "killer"

    def __init__(self, marker):
        self.marker = marker

    @classmethod
    def from_context(cls, context):
        return cls(context.options["killer"]["marker"])

    def run(self, sample):
        if sample.name == "s1" and not os.path.exists(self.marker):
            open(self.marker, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)
        return super().run(sample)

    def transfer(self, source, reference):
        return source.copy()


@pytest.mark.timeout(120)  # the run ends without the lost cell: it never waits for it
def test_a_killed_worker_fails_only_its_cell_and_a_rerun_makes_exactly_that(cluster, tmp_path, bench_set, monkeypatch):
    monkeypatch.setitem(runner_module.REGISTRY, "killer", f"{__name__}:Killer")
    killer = {"methods": [*METHODS, "killer"], "method_options": {"killer": {"marker": str(tmp_path / "killed")}}}
    out = tmp_path / "ray"

    summary = run(out, bench_set, executor="ray", **killer)  # ends: the lost cell is failed, not waited for
    assert (tmp_path / "killed").exists() and summary.failed == 1
    records = read_records(out / "results.jsonl")
    assert "WorkerCrashedError" in records["s1", "killer"]["errors"]["generate"] and records["s1", "killer"]["output"] is None
    assert sorted(path.name for path in (out / "outputs" / "killer").iterdir()) == ["s0.png", "s2.png"]  # no half file
    done = {key: record for key, record in records.items() if key != ("s1", "killer")}
    assert len(done) == len(bench_set) * len(killer["methods"]) - 1
    assert all(not r["errors"] and set(r["metrics"]) == set(METRICS) for r in done.values())

    assert run(out, bench_set, executor="ray", **killer).failed == 0
    after = read_records(out / "results.jsonl")
    assert {key: after[key] for key in done} == done  # only the lost cell was made again
    run(tmp_path / "clean", bench_set, **killer)  # locally, with the marker there: nobody is killed
    assert_same_cells(out, tmp_path / "clean")


def test_a_gpu_method_loads_in_its_actor_and_keys_its_cells_as_a_local_run(cluster, tmp_path, bench_set, monkeypatch):
    from seminft_bench.bench.methods.ours import Ours

    ours = {"methods": ["ours"], "metrics": ["psnr"], "method_options": {"ours": {"base": "tiny:0", "steps": 2}}}
    run(tmp_path / "local", bench_set, **ours)
    monkeypatch.setattr(Ours, "prepare", lambda self, bench_set: pytest.fail("the driver loaded the model"))
    assert run(tmp_path / "ray", bench_set, executor="ray", **ours).failed == 0
    assert_same_cells(tmp_path / "ray", tmp_path / "local")


class Fragile(Method):
    """A GPU method whose loading kills the worker it loads in: every time, or once (the first to claim the marker)."""

    name = "fragile"
    runs_on = "gpu"

    def __init__(self, marker, always):
        self.marker, self.always = marker, always

    @classmethod
    def from_context(cls, context):
        return cls(**context.options["fragile"])

    def prepare(self, bench_set):
        if self.always or _claim(self.marker):
            os.kill(os.getpid(), signal.SIGKILL)

    def transfer(self, source, reference):
        return source.copy()


def _claim(path):
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL))
    except FileExistsError:
        return False
    return True


def test_a_worker_that_dies_loading_a_gpu_method_leaves_it_to_the_others(cluster, tmp_path, bench_set, monkeypatch):
    monkeypatch.setitem(runner_module.REGISTRY, "fragile", f"{__name__}:Fragile")
    lines = []
    options = {"methods": ["identity", "fragile"], "method_options": {"fragile": {"marker": str(tmp_path / "died"), "always": False}}}
    summary = run_benchmark(tmp_path / "ray", RunOptions(**{**common_options(tmp_path), **options, "executor": "ray"}), bench_set=bench_set, log=lines.append)
    assert (tmp_path / "died").exists() and "1 GPU worker(s) died loading fragile; it runs on the 1 left" in lines
    assert summary.failed == 0 and summary.cells == 2 * len(bench_set) and not summary.not_computed


def test_a_gpu_method_every_worker_dies_loading_is_not_computed_and_the_run_goes_on(cluster, tmp_path, bench_set, monkeypatch):
    from seminft_bench.bench.methods.ours import Ours

    monkeypatch.setitem(runner_module.REGISTRY, "fragile", f"{__name__}:Fragile")
    monkeypatch.setattr(Ours, "prepare", lambda self, bench_set: pytest.fail("a dead worker loaded a model"))
    options = {"methods": ["identity", "fragile", "ours"], "method_options": {"fragile": {"marker": "", "always": True}, "ours": {"base": "tiny:0"}}}
    summary = run(tmp_path / "ray", bench_set, executor="ray", **options)
    assert summary.failed == 0 and summary.cells == len(bench_set)  # identity's, scored
    assert summary.not_computed["method fragile"].startswith("every GPU worker of the Ray cluster died loading fragile (out of memory?): ")
    assert summary.not_computed["method ours"] == "ours needs a GPU worker, and every one died loading an earlier method"
    assert set(json.loads((tmp_path / "ray" / "run.json").read_text())["keys"]["methods"]) == {"identity"}


def test_a_model_that_does_not_fit_on_the_gpu_workers_is_not_computed(cluster, tmp_path, bench_set, monkeypatch):
    monkeypatch.setitem(runner_module.REGISTRY, "greedy", "test_bench_runner:Greedy")  # its loading raises OutOfMemoryError
    summary = run(tmp_path / "ray", bench_set, executor="ray", methods=["identity", "greedy"])
    assert summary.not_computed == {"method greedy": "its model does not fit in memory (CUDA out of memory. Tried to allocate 20.00 GiB)"}
    assert summary.failed == 0 and summary.cells == len(bench_set)


def test_the_cli_takes_an_executor_and_refuses_an_unknown_one(cluster, tmp_path):
    from typer.testing import CliRunner

    from seminft_bench.cli import bench

    out = tmp_path / "run"
    args = ["run", "--dataset", "demo", "--limit", "2", "--method", "identity", "--metrics", "psnr", "--judges", "",
            "--reward", "", "--out", str(out), "--cache", str(tmp_path / "cache")]  # fmt: skip
    result = CliRunner().invoke(bench.app, [*args, "--executor", "ray"])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "run.json").read_text())["options"]["executor"] == "ray" and len(read_records(out / "results.jsonl")) == 2

    result = CliRunner().invoke(bench.app, [*args, "--executor", "dask"])
    assert result.exit_code == 2 and "unknown executor 'dask' (known: local, ray)" in result.output
    assert len(result.output.strip().splitlines()) == 1
