"""``seminft-bench run``: every method on every sample, scored by every metric and judge, resumably.

Three stages overlap, connected by queues: generation (one thread pool per method, as
wide as the method allows), image metrics (one thread, models loaded once) and judges
(each judge's own pool of API calls). An output is scored as soon as it is written, so a
slow API judge never holds the local methods back.

Everything lands in the run folder::

    DIR/inputs/{source,reference,target}/{sample}.png   what the methods saw (a folder dataset itself)
    DIR/outputs/{method}/{sample}.png                   each method's output
    DIR/results.jsonl                                   one record per (sample, method), see `results`
    DIR/run.json                                        dataset, settings and what could not be computed
    DIR/costs.json                                      API usage of all runs into this folder

A rerun skips every cell that is done: an output on disk is not generated again, a
metric or score already recorded is not recomputed (and cached API replies cost nothing).
Failed cells are retried. A judge, metric or method that cannot run here (no key, no
weights) is skipped with one line and reported as "not computed", never as 0.
"""

from __future__ import annotations

import json
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from seminft_bench.bench.methods import Method, MethodContext, MethodUnavailable, get_method
from seminft_bench.bench.metrics import COMPARED_WITH, DINO_THRESHOLD, METRIC_NAMES, MetricSuite
from seminft_bench.bench.results import ResultsFile
from seminft_bench.bench.samples import ROLES, BenchSet, Sample
from seminft_bench.errors import MissingWeightsError
from seminft_bench.fileio import atomic_write_text
from seminft_bench.imaging import ImageReadError, read_image, write_png

DEFAULT_JUDGES = ("gpt-4o", "gemini-2.5-flash", "qwen3-vl-32b")
DEFAULT_REWARD = "qwen3-vl-8b"
STAGES = ("generate", "metrics", "judge")


@dataclass
class RunOptions:
    """What to run; the defaults are the paper's judges, reward and metrics on the demo set."""

    dataset: str = "demo"
    methods: Sequence[str] = ("identity", "reference")
    judges: Sequence[str] = DEFAULT_JUDGES
    reward: str | None = DEFAULT_REWARD
    metrics: Sequence[str] = METRIC_NAMES
    split: str = "test"
    variant: str | None = None
    skip_bad: bool = False
    limit: int | None = None
    concurrency: int = 16
    cache: str | None = None
    judge_config: str | None = None
    device: str | None = None
    dino_threshold: float = DINO_THRESHOLD


@dataclass
class RunSummary:
    out: Path
    samples: int
    cells: int
    failed: int
    not_computed: dict[str, str]
    seconds: float
    stage_seconds: dict[str, float] = field(default_factory=dict)


def run_benchmark(out: str | os.PathLike, options: RunOptions, bench_set: BenchSet | None = None, log: Callable[[str], None] = print) -> RunSummary:
    """Run ``options`` into the folder ``out`` (resuming whatever is there) and return what happened.

    ``bench_set`` overrides ``options.dataset`` (callers that built a set in memory).
    """
    from seminft_bench.bench.datasets import load_bench_set

    started = time.perf_counter()
    out = Path(out)
    bench_set = bench_set or load_bench_set(
        options.dataset, split=options.split, variant=options.variant, skip_bad=options.skip_bad, limit=options.limit
    )
    for skipped in bench_set.skipped:
        log(f"skipped sample {skipped.name}: {skipped.reason}")
    write_inputs(out, bench_set)
    with _Run(out, options, bench_set, log) as run:
        run.start()
        run.wait()
        summary = run.summary(started)
    from seminft_bench.bench.report import write_reports

    write_reports(out)
    return summary


def write_inputs(out: Path, bench_set: BenchSet) -> None:
    """Copy each sample's images to ``out/inputs/{role}/{sample}.png`` once, for the report and the study."""
    for sample in tqdm(bench_set.samples, desc="inputs", unit="sample", leave=False):
        for role in ROLES:
            path = out / "inputs" / role / f"{sample.name}.png"
            if getattr(sample, role) is not None and not path.exists():
                write_png(sample.image(role), path, compress_level=1)


class _Run:
    """The state of one run: open methods, judges and metrics, the results file and the stage queues."""

    def __init__(self, out: Path, options: RunOptions, bench_set: BenchSet, log: Callable[[str], None]):
        from seminft_bench.vlm import CostLedger

        self.out, self.options, self.bench_set, self.log = out, options, bench_set, log
        self.results = ResultsFile(out / "results.jsonl")
        self.ledger = CostLedger()
        self.not_computed: dict[str, str] = {}
        self.stage_seconds = dict.fromkeys(STAGES, 0.0)
        self.cache = _open_cache(options.cache)
        self.methods = self._open_methods()
        self.judges = self._open_judges()
        self.metrics = self._usable_metrics()
        self.metric_queue: queue.Queue[tuple[Sample, str] | None] = queue.Queue()
        self.pending = 0
        self.done = threading.Condition()
        self.bars = {
            stage: tqdm(total=0, desc=stage, unit="cell", position=i, leave=True) for i, stage in enumerate(STAGES)
        }
        self.pools: list[ThreadPoolExecutor] = []
        self.metric_thread = threading.Thread(target=self._metrics_worker, name="metrics", daemon=True)

    # ------------------------------------------------------------------ set-up

    def _skip(self, what: str, reason: str) -> None:
        self.not_computed[what] = reason
        self.log(f"not computed: {what}: {reason}")

    def _open_methods(self) -> dict[str, Method]:
        context = MethodContext(
            cache=self.cache, ledger=self.ledger, device=self.options.device, concurrency=self.options.concurrency
        )
        methods = {}
        for name in self.options.methods:
            try:
                method = get_method(name, context)
                method.prepare(self.bench_set)
            except (MethodUnavailable, MissingWeightsError) as error:
                self._skip(f"method {name}", str(error))
                continue
            methods[method.name] = method
        return methods

    def _open_judges(self) -> dict[str, object]:
        from seminft_bench.vlm import Judge, JudgeUnavailable, Transport, load_config

        config = load_config(self.options.judge_config)
        judges = {}
        wanted = [(name, False) for name in self.options.judges]
        if self.options.reward:
            wanted.append((self.options.reward, True))
        for name, reward in wanted:
            column = "reward" if reward else name
            try:
                judges[column] = Judge.from_name(
                    name, config=config, reward=reward, cache=self.cache, ledger=self.ledger,
                    transport=Transport(self.options.concurrency), device=self.options.device,
                )
            except (JudgeUnavailable, MissingWeightsError, ValueError) as error:
                self._skip(f"judge {column}", str(error))
        return judges

    def _usable_metrics(self) -> list[str]:
        metrics = []
        for name in self.options.metrics:
            if name not in METRIC_NAMES:
                raise ValueError(f"unknown metric {name!r}; known: {', '.join(METRIC_NAMES)}")
            if COMPARED_WITH[name] == "target" and not self.bench_set.has_targets:
                self._skip(f"metric {name}", f"the set {self.bench_set.name!r} has no targets")
            else:
                metrics.append(name)
        return metrics

    # ------------------------------------------------------------------ stages

    def start(self) -> None:
        self.metric_thread.start()
        for name, method in self.methods.items():
            pool = ThreadPoolExecutor(max(1, method.concurrency), thread_name_prefix=f"method-{name}")
            self.pools.append(pool)
            for sample in self.bench_set.samples:
                output = self.out / "outputs" / name / f"{sample.name}.png"
                if output.exists():
                    self._scored_later(sample, name, output)
                else:
                    self._add_pending("generate")
                    pool.submit(self._generate, method, sample, output)

    def _generate(self, method: Method, sample: Sample, output: Path) -> None:
        started = time.perf_counter()
        try:
            image = method.run(sample)
            with Image.open(self.out / "inputs" / "source" / f"{sample.name}.png") as source:
                expected = source.size  # header only: the copy has its orientation baked in
            if image.mode != "RGB" or image.size != expected:
                raise ValueError(f"returned a {image.mode} image of {image.size}, expected RGB of {expected}")
            write_png(image, output, compress_level=1)
        except Exception as error:  # one failed sample must not stop the run: it is recorded and retried next time
            self._record_error(sample, method.name, "generate", error)
        else:
            self.results.update(sample.name, method.name, lambda r: r["errors"].pop("generate", None))
            self._scored_later(sample, method.name, output)
        finally:
            self._finish("generate", started)

    def _scored_later(self, sample: Sample, method: str, output: Path) -> None:
        """Queue the metrics and judge calls this output still lacks."""
        record = self.results.record(sample.name, method)
        if record["output"] is None:
            self.results.update(sample.name, method, lambda r: r.__setitem__("output", output.relative_to(self.out).as_posix()))
        missing = [name for name in self.metrics if record["metrics"].get(name) is None]
        if missing:
            self._add_pending("metrics")
            self.metric_queue.put((sample, method))
        for column, judge in self.judges.items():
            done = record["reward"] if column == "reward" else record["scores"].get(column)
            if done is None:
                self._add_pending("judge")
                self._judge(judge, column, sample, method, output)

    def _judge(self, judge, column: str, sample: Sample, method: str, output: Path) -> None:
        from seminft_bench.vlm import Pair

        started = time.perf_counter()
        reference = self.out / "inputs" / "reference" / f"{sample.name}.png"
        future = judge.submit(Pair(f"{method}/{sample.name}", reference, output))

        def record(done: Future) -> None:
            try:
                judgement = done.result()
                score, reasoning, error = judgement.score, judgement.reasoning, judgement.error
            except Exception as failure:  # noqa: BLE001 - a crashed call is a failed cell
                score, reasoning, error = None, None, _message(failure)

            def change(r: dict) -> None:
                if column == "reward":
                    r["reward"] = score
                else:
                    r["scores"][column] = score
                    if reasoning:
                        r["reasoning"][column] = reasoning
                if error:
                    r["errors"][f"judge:{column}"] = error
                else:
                    r["errors"].pop(f"judge:{column}", None)

            self.results.update(sample.name, method, change)
            self._finish("judge", started)

        future.add_done_callback(record)

    def _metrics_worker(self) -> None:
        suites: dict[str, MetricSuite] = {}
        while (item := self.metric_queue.get()) is not None:
            sample, method = item
            started = time.perf_counter()
            record = self.results.record(sample.name, method)
            missing = [n for n in self.metrics if record["metrics"].get(n) is None and f"metric {n}" not in self.not_computed]
            if missing:
                self._compute_metrics(suites, missing, sample, method)
            self._finish("metrics", started)

    def _compute_metrics(self, suites: dict[str, MetricSuite], names: list[str], sample: Sample, method: str) -> None:
        """Each metric in ``names`` for one output; every image is decoded once for all of them."""
        images: dict[str, object] = {}
        for name in names:
            role = COMPARED_WITH[name]
            try:
                if "pred" not in images:
                    images["pred"] = read_image(self.out / "outputs" / method / f"{sample.name}.png")
                if role not in images:
                    images[role] = sample.image(role)
                suite = suites.setdefault(
                    name, MetricSuite([name], dino_threshold=self.options.dino_threshold, device=self.options.device)
                )
                values = suite(images["pred"], **{role: images[role]})
            except MissingWeightsError as error:
                self._skip(f"metric {name}", str(error))
                continue
            except (ImageReadError, ValueError, RuntimeError) as error:
                self._record_error(sample, method, f"metric:{name}", error)
                continue

            def change(r: dict, values=values, name=name) -> None:
                for key, value in values.items():
                    r["metrics"][key] = _plain(value[0])
                r["errors"].pop(f"metric:{name}", None)

            self.results.update(sample.name, method, change)

    # ------------------------------------------------------------------ book-keeping

    def _record_error(self, sample: Sample, method: str, cell: str, error: BaseException) -> None:
        message = _message(error)
        self.results.update(sample.name, method, lambda r: r["errors"].__setitem__(cell, message))

    def _add_pending(self, stage: str) -> None:
        with self.done:
            self.pending += 1
            self.bars[stage].total += 1
            self.bars[stage].refresh()

    def _finish(self, stage: str, started: float) -> None:
        with self.done:
            self.stage_seconds[stage] += time.perf_counter() - started
            self.bars[stage].update(1)
            self.pending -= 1
            self.done.notify_all()

    def wait(self) -> None:
        with self.done:
            while self.pending:
                self.done.wait()

    def summary(self, started: float) -> RunSummary:
        names = {sample.name for sample in self.bench_set.samples}
        records = [r for (sample, _), r in self.results.records.items() if sample in names]
        return RunSummary(
            out=self.out,
            samples=len(self.bench_set.samples),
            cells=len(records),
            failed=sum(len(r["errors"]) for r in records),
            not_computed=dict(self.not_computed),
            seconds=time.perf_counter() - started,
            stage_seconds=dict(self.stage_seconds),
        )

    def __enter__(self) -> _Run:
        return self

    def __exit__(self, *exc: object) -> None:
        for pool in self.pools:
            pool.shutdown(wait=True, cancel_futures=True)
        self.metric_queue.put(None)
        if self.metric_thread.is_alive():
            self.metric_thread.join()
        for judge in self.judges.values():
            judge.close()
        for method in self.methods.values():
            method.close()
        for bar in self.bars.values():
            bar.close()
        self.results.compact()
        self._write_costs()
        self._write_run_info()
        if self.cache is not None:
            self.cache.close()

    def _write_costs(self) -> None:
        from seminft_bench.vlm import CostLedger

        path = self.out / "costs.json"
        total = CostLedger.read(path) if path.exists() else CostLedger()
        total.add(self.ledger)
        total.write(path)
        self.ledger.write(self.out / "costs_last_run.json")

    def _write_run_info(self) -> None:
        path = self.out / "run.json"
        previous = json.loads(path.read_text()) if path.exists() else {}
        info = {
            "dataset": self.bench_set.name,
            "options": asdict(self.options),
            "samples": [sample.name for sample in self.bench_set.samples],
            "skipped": [asdict(s) for s in self.bench_set.skipped],
            "has_targets": self.bench_set.has_targets,
            "methods": _merged(previous.get("methods", []), self.methods),
            "judges": _merged(previous.get("judges", []), self.options.judges),
            "reward": self.options.reward or previous.get("reward"),
            "metrics": _merged(previous.get("metrics", []), self.metrics),
            "dino_threshold": self.options.dino_threshold,
            "not_computed": self.not_computed,
            "stage_seconds": self.stage_seconds,
        }
        atomic_write_text(path, json.dumps(info, indent=2, default=str))


def _open_cache(folder: str | None):
    from seminft_bench.vlm import ResponseCache
    from seminft_bench.vlm.cache import default_cache_dir

    return ResponseCache(folder or default_cache_dir())


def _merged(before: Sequence[str], now: Sequence[str]) -> list[str]:
    """Names of earlier runs into this folder first, then new ones, each once: tables keep their column order."""
    return list(dict.fromkeys([*before, *now]))


def _message(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


def _plain(value: object) -> float | bool:
    """A numpy scalar as the JSON-safe Python value."""
    return value.item() if isinstance(value, np.generic) else value
