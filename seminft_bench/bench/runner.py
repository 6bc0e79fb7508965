"""``seminft-bench run``: every method on every sample, scored by every metric and judge, resumably.

The flow, in one place: each (sample, method) is a *unit* run in its method's pool
(as wide as the method allows). A unit generates the output if it lacks one made under
the current settings, then queues the scoring it still lacks: one task on the metrics
pool (one thread, models loaded once) and one per judge on that judge's pool. Every task
is submitted through `_Run.submit`, which wraps it so that whatever it raises becomes a
failed cell, and the run ends when every submitted task has finished (the one completion
rule). So a slow API judge never holds the local methods back, and nothing can hang.

With ``executor="ray"`` the flow stays the same and the driver still writes everything; only
the computing moves (`_RayCluster`): a method whose `Method.runs_on` is "cpu" and each
output's metrics run as one-CPU Ray tasks, a "gpu" method in one actor per GPU of the
cluster, and the driver's threads wait for them. A cell whose worker or node is lost fails
like any other (Ray does not retry it) and the rerun makes it; an output is written only
once it is back, so a lost cell never leaves half a file.

Everything lands in the run folder::

    DIR/inputs/{source,reference,target}/{sample}.png   what the methods saw (a folder dataset itself)
    DIR/outputs/{method}/{sample}.png                   each method's output
    DIR/results.jsonl                                   one record per (sample, method), see `results`
    DIR/run.json                                        dataset, settings, cell keys, what could not be computed
    DIR/costs.json                                      API usage of all runs into this folder
    DIR/.lock                                           held by the one process writing the folder

A run folder belongs to one dataset (name, split, variant and the content of its
samples); a rerun naming another fails at once (``overwrite`` starts afresh). Every cell
carries the key of the settings that made it (`results.cell_key`): a rerun recomputes
exactly the cells whose settings changed, and reuses the rest (cached API replies cost
nothing). Failed cells are retried. A judge, metric or method that cannot run here (no
key, no weights) is reported as "not computed", never as 0.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import re
import shutil
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from PIL import Image
from tqdm import tqdm

from seminft_bench.bench.methods import (
    PREDICTIONS_PREFIX, REGISTRY, Method, MethodContext, MethodUnavailable, get_method, is_method_name,
)
from seminft_bench.bench.metrics import (
    DINO_MODEL,
    DINO_THRESHOLD,
    METRIC_NAMES,
    MetricSettings,
    get_metric,
    with_dependencies,
)
from seminft_bench.bench.results import ResultsFile, cell_key, settings_hash
from seminft_bench.bench.samples import ROLES, BenchSet, Sample
from seminft_bench.errors import MissingWeightsError
from seminft_bench.fileio import FolderLock, atomic_write_text, remove_partial_writes
from seminft_bench.imaging import read_image, write_png
from seminft_bench.pipelines.executors import EXECUTORS, ray_session

DEFAULT_JUDGES = ("gpt-4o", "gemini-2.5-flash", "qwen3-vl-32b")
DEFAULT_REWARD = "qwen3-vl-8b"
DEFAULT_METRICS = ("psnr", "ssim", "lpips", "dists", "success", "color", "structure")
STAGES = ("generate", "metrics", "judge")
REWARD = "reward"
"""The reward model's column (its model is in run.json)."""
FOLDER_FILES = ("inputs", "outputs", "results.jsonl", "run.json", "costs.json", "costs_last_run.json",
                "summary.csv", "report.md", "report.tex", "report.html")  # fmt: skip
"""What a run writes into its folder: what ``overwrite`` removes."""


_SECRET_NAME = re.compile(r"(API_KEY|_TOKEN|_SECRET)$")
T = TypeVar("T")


class RunFolderError(ValueError):
    """The run folder holds another dataset's run (or cannot be used); the message says what differs."""


@dataclass
class RunOptions:
    """What to run; the defaults are the paper's judges, reward and metrics on the demo set."""

    dataset: str = "demo"
    methods: Sequence[str] = ("identity", "reference")
    judges: Sequence[str] = DEFAULT_JUDGES
    reward: str | None = DEFAULT_REWARD
    metrics: Sequence[str] = DEFAULT_METRICS
    split: str = "test"
    variant: str | None = None
    skip_bad: bool = False
    limit: int | None = None
    concurrency: int = 16
    cache: str | None = None
    judge_config: str | None = None
    device: str | None = None
    dino_threshold: float = DINO_THRESHOLD
    dino_model: str = DINO_MODEL
    overwrite: bool = False
    method_options: dict[str, dict] = field(default_factory=dict)
    """Per method, its own options, e.g. ``{"ours": {"base": ..., "lora": [...]}}``."""
    executor: str = "local"
    """"local" (this process) or "ray" (methods and metrics on a Ray cluster; this process still writes)."""
    ray_address: str | None = None
    """The Ray cluster to join ("auto", "ray://HOST:10001"); None starts a local Ray instance."""


@dataclass
class RunSummary:
    out: Path
    samples: int
    cells: int
    failed: int
    not_computed: dict[str, str]
    seconds: float
    stage_seconds: dict[str, float] = field(default_factory=dict)
    interrupted: bool = False


def run_benchmark(out: str | os.PathLike, options: RunOptions, bench_set: BenchSet | None = None, log: Callable[[str], None] = print) -> RunSummary:
    """Run ``options`` into the folder ``out`` (resuming whatever is there) and return what happened.

    ``bench_set`` overrides ``options.dataset`` (callers that built a set in memory). Every
    name is checked before any work; a KeyboardInterrupt stops the run within seconds, with
    everything finished so far kept, and is raised again once the folder is consistent.
    """
    from seminft_bench.bench.datasets import load_bench_set
    from seminft_bench.bench.report import write_reports

    started = time.perf_counter()
    out = Path(out)
    check_names(options)
    recorded = recorded_fingerprints(out)  # a rerun's samples with the very bytes of last time are not decoded again
    computed: dict[str, tuple[Sample, str]] = {}

    def fingerprint(sample: Sample) -> str:  # once per sample object: for the load's vouching, then the identity
        if (seen := computed.get(sample.name)) is None or seen[0] is not sample:
            computed[sample.name] = seen = (sample, sample_fingerprint(sample))
        return seen[1]

    bench_set = bench_set or load_bench_set(
        options.dataset, split=options.split, variant=options.variant, skip_bad=options.skip_bad, limit=options.limit,
        known_good=lambda sample: recorded.get(sample.name) == fingerprint(sample),
    )
    for skipped in bench_set.skipped:
        log(f"skipped sample {skipped.name}: {skipped.reason}")
    with FolderLock(out, job="benchmark run"):
        identity = claim_folder(out, dataset_identity(bench_set, options, fingerprint), overwrite=options.overwrite)
        for folder in ("inputs", "outputs"):  # a killed run's half-written images; the rest of out may not be ours
            remove_partial_writes(out / folder)
        cluster = ray_session(options.ray_address) if options.executor == "ray" else nullcontext()
        with cluster, _Run(out, options, bench_set, identity, log) as run:
            write_inputs(out, bench_set)
            try:
                run.start()
                run.wait()
            except KeyboardInterrupt:
                run.stop()
                raise
            finally:
                summary = run.summary(started)
        write_reports(out)
    return summary


def check_names(options: RunOptions) -> None:
    """Fail before any work when a method, judge or metric name is unknown (all of them in one message)."""
    from seminft_bench.vlm import load_config

    config = load_config(options.judge_config)
    problems = []
    for name in options.methods:
        if not is_method_name(name):
            problems.append(f"unknown method {name!r} (known: {', '.join(REGISTRY)}, {PREDICTIONS_PREFIX}DIR or NAME:VARIANT)")
    for name in [*options.judges, *([options.reward] if options.reward else [])]:
        if name not in config.judges:
            problems.append(f"unknown judge {name!r} (known: {', '.join(config.judges)}; add one in a judge config)")
    for name in options.metrics:
        if name not in METRIC_NAMES:
            problems.append(f"unknown metric {name!r} (known: {', '.join(METRIC_NAMES)})")
    if len(set(options.methods)) != len(options.methods):
        problems.append("a method is named twice")
    if options.executor not in EXECUTORS:
        problems.append(f"unknown executor {options.executor!r} (known: {', '.join(EXECUTORS)})")
    if problems:
        raise ValueError("; ".join(problems))


# --------------------------------------------------------------------------- the folder's identity


def dataset_identity(
    bench_set: BenchSet, options: RunOptions, fingerprint: Callable[[Sample], str] | None = None
) -> dict:
    """What a run folder belongs to: the set's name, split and variant, and a content hash per sample
    (`sample_fingerprint`, or ``fingerprint`` where the caller has them already)."""
    fingerprint = fingerprint or sample_fingerprint
    return {
        "dataset": bench_set.name,
        "split": options.split,
        "variant": options.variant,
        "samples": {sample.name: fingerprint(sample) for sample in bench_set.samples},
    }


def sample_fingerprint(sample: Sample) -> str:
    """SHA-256 (16 hex digits) of a sample's image files and preset: equal only for the same inputs."""
    digest = hashlib.sha256()
    for role in ROLES:
        source = getattr(sample, role)
        data = b"" if source is None else source if isinstance(source, bytes) else Path(source).read_bytes()
        digest.update(f"{role}:{len(data)}:".encode() + data)
    preset = sample.preset
    if preset is not None:
        described = preset.to_dict() if hasattr(preset, "to_dict") else np.asarray(preset.table).tobytes().hex()
        digest.update(json.dumps(described, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:16]


def recorded_fingerprints(out: Path) -> dict[str, str]:
    """The content fingerprint of each sample the run folder ``out`` has run (`sample_fingerprint`); none when it
    has no readable run.json. Only checked samples get there, so these bytes decoded once already."""
    try:
        return dict(json.loads((out / "run.json").read_text(encoding="utf-8"))["identity"]["samples"])
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def claim_folder(out: Path, identity: dict, *, overwrite: bool) -> dict:
    """Make ``out`` this dataset's run folder: new, the same dataset's, or (``overwrite``) emptied first.

    Returns the folder's identity from now on: the samples of earlier runs (a larger ``--limit``)
    keep their fingerprints, so a later run over them is checked too.
    """
    info_path = out / "run.json"
    if overwrite:
        for name in FOLDER_FILES:
            path = out / name
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
        return identity
    if not info_path.exists():
        if (out / "results.jsonl").exists():
            raise RunFolderError(f"{out} has results.jsonl but no run.json: not a run folder of this version; use a new --out")
        return identity
    try:
        before = json.loads(info_path.read_text(encoding="utf-8"))["identity"]
    except (ValueError, KeyError, TypeError):
        raise RunFolderError(f"{out}/run.json is unreadable or from an older version; use a new --out or --overwrite") from None
    differences = [
        f"{key} {before.get(key)!r} there, {identity[key]!r} now"
        for key in ("dataset", "split", "variant")
        if before.get(key) != identity[key]
    ]
    changed = sorted(name for name, fp in identity["samples"].items() if before.get("samples", {}).get(name, fp) != fp)
    if changed:
        shown = ", ".join(changed[:5]) + (f" and {len(changed) - 5} more" if len(changed) > 5 else "")
        differences.append(f"{len(changed)} sample(s) have other images than there: {shown}")
    if differences:
        raise RunFolderError(
            f"{out} holds a run of another dataset ({'; '.join(differences)}). Use a new --out for this one, "
            "or --overwrite to start this folder afresh."
        )
    return {**identity, "samples": {**before.get("samples", {}), **identity["samples"]}}


def write_inputs(out: Path, bench_set: BenchSet) -> None:
    """Copy each sample's images to ``out/inputs/{role}/{sample}.png`` once, for the report and the study."""
    for sample in tqdm(bench_set.samples, desc="inputs", unit="sample", leave=False):
        for role in ROLES:
            path = out / "inputs" / role / f"{sample.name}.png"
            if getattr(sample, role) is not None and not path.exists():
                write_png(sample.image(role), path, compress_level=1)


# --------------------------------------------------------------------------- the run


class _Run:
    """One run's open methods, judges and metrics, its results file, and the tasks in flight."""

    def __init__(self, out: Path, options: RunOptions, bench_set: BenchSet, identity: dict, log: Callable[[str], None]):
        from seminft_bench.vlm import CostLedger

        self.out, self.options, self.bench_set, self.identity, self.log = out, options, bench_set, identity, log
        self.results = ResultsFile(out / "results.jsonl")
        self.ledger = CostLedger()
        self.not_computed: dict[str, str] = {}
        self.stage_seconds = dict.fromkeys(STAGES, 0.0)
        self.metric_settings = MetricSettings(
            dino_model=options.dino_model, dino_threshold=options.dino_threshold, device=options.device
        )
        self.cache = _open_cache(options.cache)
        self.cluster = _RayCluster(bench_set, log) if options.executor == "ray" else None
        self.methods = self._open_methods()
        self.judges = self._open_judges()
        self.metrics = self._usable_metrics()
        self.settings = self._settings()
        self.keys = {kind: {name: settings_hash(s) for name, s in entries.items()} for kind, entries in self.settings.items()}
        self._write_run_info()
        self.pools = {f"method {name}": ThreadPoolExecutor(self._width(m), f"method-{name}") for name, m in self.methods.items()}
        self.pools["metrics"] = ThreadPoolExecutor(1 if self.cluster is None else self.cluster.cpus, "metrics")
        for column, judge in self.judges.items():
            self.pools[f"judge {column}"] = ThreadPoolExecutor(2 * self.options.concurrency, f"judge-{column}")
        self.unfinished = 0
        """Tasks submitted and not yet finished: `wait` needs this count, never a scan of every task."""
        self.lock = threading.Lock()
        self.finished = threading.Condition(self.lock)
        self.stopping = threading.Event()
        self.bars = {stage: tqdm(total=0, desc=stage, unit="cell", position=i, leave=True) for i, stage in enumerate(STAGES)}
        self.unrecorded: list[str] = []

    # ------------------------------------------------------------------ set-up

    def _skip(self, what: str, reason: str) -> None:
        if what not in self.not_computed:
            self.not_computed[what] = reason
            self.log(f"not computed: {what}: {reason}")

    def _open_methods(self) -> dict[str, Method | _GpuMethod]:
        context = MethodContext(
            cache=self.cache, ledger=self.ledger, device=self.options.device, concurrency=self.options.concurrency,
            options=self.options.method_options,
        )
        methods = {}
        for name in self.options.methods:
            try:
                method = get_method(name, context)
                if self.cluster is not None and method.runs_on == "gpu":  # its model loads on the GPUs, not here
                    method = self.cluster.open_on_gpus(name, context)
                else:
                    method.prepare(self.bench_set)
            except (MethodUnavailable, MissingWeightsError) as error:
                self._skip(f"method {name}", str(error))
                continue
            except Exception as error:
                if not _out_of_memory(error):
                    raise
                models = [loaded for loaded, method in methods.items() if method.runs_on == "gpu"]
                alone = f"; it may fit without {', '.join(models)} (run it alone into the same folder)" if models else ""
                self._skip(f"method {name}", f"its model does not fit in memory ({_first_line(error)}){alone}")
                continue
            methods[method.name] = method
        return methods

    def _open_judges(self) -> dict[str, object]:
        from seminft_bench.vlm import Judge, JudgeUnavailable, Transport, load_config

        config = load_config(self.options.judge_config)
        wanted = [(name, name, False) for name in self.options.judges]
        if self.options.reward:
            wanted.append((REWARD, self.options.reward, True))
        judges = {}
        for column, name, reward in wanted:
            try:
                judges[column] = Judge.from_name(
                    name, config=config, reward=reward, cache=self.cache, ledger=self.ledger,
                    transport=Transport(self.options.concurrency), device=self.options.device,
                )
            except (JudgeUnavailable, MissingWeightsError) as error:
                self._skip(f"judge {column}", str(error))
        return judges

    def _usable_metrics(self) -> list[str]:
        metrics = []
        for name in with_dependencies(self.options.metrics):
            if get_metric(name).compared_with == "target" and not self.bench_set.has_targets:
                self._skip(f"metric {name}", f"the set {self.bench_set.name!r} has no targets")
            else:
                metrics.append(name)
        return metrics

    def _settings(self) -> dict[str, dict[str, dict]]:
        """Per method, metric and judge column, everything that determines its cells (keys are their hashes)."""
        return {
            "methods": {name: {"method": name, **method.settings()} for name, method in self.methods.items()},
            "metrics": {name: get_metric(name).settings(self.metric_settings) for name in self.metrics},
            "judges": {column: judge.settings() for column, judge in self.judges.items()},
        }

    def _width(self, method: Method | _GpuMethod) -> int:
        """How many of ``method``'s samples are in flight: as many as it allows here; on Ray, as the cluster runs at once."""
        if self.cluster is None or method.runs_on == "driver":
            return max(1, method.concurrency)
        return self.cluster.cpus if method.runs_on == "cpu" else len(self.cluster.gpu_workers)

    def _offload(self, fn: Callable[..., T], *args: object) -> T:
        """``fn(*args)`` in this thread, or with executor ray as a one-CPU Ray task this thread waits for."""
        return fn(*args) if self.cluster is None else self.cluster.call(fn, *args)

    # ------------------------------------------------------------------ tasks

    def submit(self, pool: str, stage: str, task: Callable[[], None], sample: Sample, method: str, cells: Sequence[str]) -> None:
        """Run ``task`` on ``pool``; anything it raises becomes an error on ``cells`` (the one place failures land)."""

        def guarded() -> None:
            started, ran = time.perf_counter(), not self.stopping.is_set()
            try:
                if ran:
                    task()
            except Exception as error:  # noqa: BLE001 - any failure is a failed cell, never a lost one
                self._record_errors(sample, method, cells, error)
            finally:
                with self.lock:
                    if ran:
                        self.stage_seconds[stage] += time.perf_counter() - started
                        self.bars[stage].update(1)
                    self.unfinished -= 1
                    self.finished.notify_all()

        with self.lock:  # under the lock `stop` takes too, so nothing is submitted to a pool it shut down
            if self.stopping.is_set():
                return
            self.bars[stage].total += 1
            self.bars[stage].update(0)  # redrawn as tqdm throttles its updates, not once a task (O(N) redraws)
            self.unfinished += 1
            self.pools[pool].submit(guarded)

    def start(self) -> None:
        for name in self.methods:
            for sample in self.bench_set.samples:
                self.submit(f"method {name}", "generate", lambda s=sample, n=name: self._unit(s, n), sample, name, ["generate"])

    def wait(self) -> None:
        """Until every task submitted (including those submitted by tasks) has finished."""
        with self.finished:
            while self.unfinished:
                self.finished.wait(timeout=0.5)  # a timeout keeps the main thread responsive to Ctrl-C

    def stop(self) -> None:
        """Ctrl-C: queued tasks are dropped, running ones finish on their own without holding the process."""
        with self.lock:
            self.stopping.set()
        for pool in self.pools.values():
            pool.shutdown(wait=False, cancel_futures=True)

    def _unit(self, sample: Sample, method: str) -> None:
        """Generate ``sample``'s output under the current settings if it lacks one, then queue its missing scores."""
        output = self.out / "outputs" / method / f"{sample.name}.png"
        key = self.keys["methods"][method]
        record = self.results.record(sample.name, method)
        if not (output.exists() and record["keys"].get("generate") == key):
            self._generate(sample, method, output, key)
            record = self.results.record(sample.name, method)
        missing = [name for name in self.metrics if not self._valid(record, method, f"metric:{name}")]
        if missing:
            cells = [f"metric:{name}" for name in missing]
            self.submit("metrics", "metrics", lambda: self._score_metrics(sample, method, missing), sample, method, cells)
        for column in self.judges:
            if not self._valid(record, method, f"judge:{column}"):
                task = lambda c=column: self._judge(sample, method, c)  # noqa: E731
                self.submit(f"judge {column}", "judge", task, sample, method, [f"judge:{column}"])

    def _valid(self, record: dict, method: str, cell: str) -> bool:
        return record["keys"].get(cell) == cell_key(self.keys, method, cell) and cell not in record["errors"]

    def _generate(self, sample: Sample, method: str, output: Path, key: str) -> None:
        maker = self.methods[method]
        image = self._offload(maker.run, sample) if maker.runs_on == "cpu" else maker.run(sample)
        with Image.open(self.out / "inputs" / "source" / f"{sample.name}.png") as source:
            expected = source.size  # header only: the copy has its orientation baked in
        if not isinstance(image, Image.Image) or image.mode != "RGB" or image.size != expected:
            got = f"a {image.mode} image of {image.size}" if isinstance(image, Image.Image) else type(image).__name__
            raise ValueError(f"returned {got}, expected an RGB image of {expected}")
        write_png(image, output, compress_level=1)
        relative = output.relative_to(self.out).as_posix()

        def fresh(record: dict) -> None:  # a new output: every score of the old one is void
            record.update(output=relative, scores={}, reasoning={}, reward=None, metrics={}, errors={}, keys={"generate": key})

        self.results.update(sample.name, method, fresh)

    def _score_metrics(self, sample: Sample, method: str, names: list[str]) -> None:
        """Each metric of ``names`` for one output (`_metric_values`, here or on Ray), each recorded on its own."""
        pred = read_image(self.out / "outputs" / method / f"{sample.name}.png")
        skipped = frozenset(name for name in with_dependencies(names) if f"metric {name}" in self.not_computed)
        values, failures = self._offload(_metric_values, pred, sample, names, self.metric_settings, skipped)
        for name, error in failures.items():
            if isinstance(error, MissingWeightsError):
                self._skip(f"metric {name}", str(error))
            else:
                self._record_errors(sample, method, [f"metric:{name}"], error)
        for name in names:
            if name not in values:
                continue
            cell, key = f"metric:{name}", cell_key(self.keys, method, f"metric:{name}")

            def change(r: dict, name=name, cell=cell, key=key) -> None:
                r["metrics"][name] = _plain(values[name])
                r["keys"][cell] = key
                r["errors"].pop(cell, None)

            self.results.update(sample.name, method, change)

    def _judge(self, sample: Sample, method: str, column: str) -> None:
        from seminft_bench.vlm import Pair

        reference = self.out / "inputs" / "reference" / f"{sample.name}.png"
        output = self.out / "outputs" / method / f"{sample.name}.png"
        judgement = self.judges[column].score_pairs([Pair(f"{method}/{sample.name}", reference, output)])[0]
        cell, key = f"judge:{column}", cell_key(self.keys, method, f"judge:{column}")

        def change(r: dict) -> None:
            if column == REWARD:
                r["reward"] = judgement.score
            else:
                r["scores"][column] = judgement.score
                r["reasoning"].pop(column, None)
                if judgement.reasoning:
                    r["reasoning"][column] = judgement.reasoning
            if judgement.error is not None:
                r["errors"][cell] = judgement.error
                r["keys"].pop(cell, None)
            else:
                r["errors"].pop(cell, None)
                r["keys"][cell] = key

        self.results.update(sample.name, method, change)

    # ------------------------------------------------------------------ book-keeping

    def _record_errors(self, sample: Sample, method: str, cells: Sequence[str], error: BaseException) -> None:
        message = _message(error)

        def change(r: dict) -> None:
            for cell in cells:
                r["errors"][cell] = message
                r["keys"].pop(cell, None)

        try:
            self.results.update(sample.name, method, change)
        except Exception as failure:  # noqa: BLE001 - the store itself failed (disk full): keep counting
            with self.lock:
                self.unrecorded += [f"{method}/{sample.name} {cell}: {message} (not saved: {_message(failure)})" for cell in cells]

    def summary(self, started: float) -> RunSummary:
        failed = 0
        for sample in self.bench_set.samples:
            for method in self.methods:
                record = self.results.records.get((sample.name, method))
                failed += 0 if record is None else len(self._current_errors(record))
        for line in self.unrecorded:
            self.log(f"failed and not saved: {line}")
        return RunSummary(
            out=self.out,
            samples=len(self.bench_set.samples),
            cells=sum((s.name, m) in self.results.records for s in self.bench_set.samples for m in self.methods),
            failed=failed + len(self.unrecorded),
            not_computed=dict(self.not_computed),
            seconds=time.perf_counter() - started,
            stage_seconds=dict(self.stage_seconds),
            interrupted=self.stopping.is_set(),
        )

    def _current_errors(self, record: dict) -> list[str]:
        """The errors of cells this run asks for (an old judge's failure no longer counts)."""
        cells = {"generate", *(f"metric:{n}" for n in self.metrics), *(f"judge:{c}" for c in self.judges)}
        return [cell for cell in record["errors"] if cell in cells]

    def __enter__(self) -> _Run:
        return self

    def __exit__(self, *exc: object) -> None:
        interrupted = self.stopping.is_set()
        for pool in self.pools.values():
            pool.shutdown(wait=not interrupted, cancel_futures=True)
        if not interrupted:  # closing waits for calls in flight; after Ctrl-C the process is leaving anyway
            for judge in self.judges.values():
                judge.close()
            for method in self.methods.values():
                method.close()
        if self.cluster is not None:
            self.cluster.close()
        for bar in self.bars.values():
            bar.close()
        self.results.close()
        self.results.compact()
        self._write_costs()
        self._write_run_info()
        if self.cache is not None and not interrupted:
            self.cache.close()

    def _write_costs(self) -> None:
        from seminft_bench.vlm import CostLedger

        path = self.out / "costs.json"
        total = CostLedger.read(path) if path.exists() else CostLedger()
        total.add(self.ledger)
        total.write(path)
        self.ledger.write(self.out / "costs_last_run.json")

    def _write_run_info(self) -> None:
        info = {
            "identity": self.identity,
            "dataset": self.bench_set.name,
            "options": asdict(self.options),
            "samples": [sample.name for sample in self.bench_set.samples],
            "skipped": [asdict(s) for s in self.bench_set.skipped],
            "has_targets": self.bench_set.has_targets,
            "methods": list(self.methods),
            "judges": list(self.options.judges),  # as asked: those that could not run show as "not computed"
            "reward": self.options.reward,
            "metrics": with_dependencies(self.options.metrics),
            "dino_threshold": self.options.dino_threshold,
            "settings": self.settings,
            "keys": self.keys,
            "not_computed": self.not_computed,
            "stage_seconds": self.stage_seconds,
        }
        atomic_write_text(self.out / "run.json", json.dumps(info, indent=2, default=str))


# --------------------------------------------------------------------------- where the computing runs


def _metric_values(
    pred: Image.Image, sample: Sample, names: Sequence[str], settings: MetricSettings, not_computed: frozenset[str]
) -> tuple[dict[str, object], dict[str, Exception]]:
    """The metrics of ``names`` and those they use (except ``not_computed``) on one output: the values, and what
    each failed one raised (`MissingWeightsError`: it cannot run here). Each image is decoded once. It writes
    nothing, so it runs wherever the executor puts it."""
    values: dict[str, object] = {}
    failures: dict[str, Exception] = {}
    images: dict[str, Image.Image] = {}
    for name in with_dependencies(names):
        metric = get_metric(name)
        if name in not_computed:
            continue
        try:
            if metric.uses is not None:
                if metric.uses not in values:
                    if metric.uses in not_computed or isinstance(failures.get(metric.uses), MissingWeightsError):
                        raise MissingWeightsError(f"needs {metric.uses}, which is not computed")
                    raise ValueError(f"needs {metric.uses}, which failed")
                value = metric.compute(values[metric.uses], None, settings)
            else:
                role = metric.compared_with
                if role not in images:
                    images[role] = sample.image(role)
                value = metric.compute(pred, images[role], settings)
            if np.isnan(np.asarray(value, dtype=np.float64)).any():
                raise ValueError(f"{name} is undefined for this pair (NaN)")
        except Exception as error:  # noqa: BLE001 - recorded on this metric's cell only
            failures[name] = error
        else:
            values[name] = value
    return values, failures


class _RayCluster:
    """A run's share of a Ray cluster: a one-CPU task that runs any picklable call, and (once a GPU method opens)
    one `_GpuWorker` actor per GPU of the cluster. The driver's threads wait on them and write what comes back."""

    def __init__(self, bench_set: BenchSet, log: Callable[[str], None]):
        import ray

        self.log = log
        self.cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
        # No retries: a cell lost with its worker fails and the rerun makes it (a sample that killed its worker would kill the next).
        self.task = ray.remote(num_cpus=1, max_retries=0)(_apply)
        self.bench_set = bench_set
        self.shared_set: ray.ObjectRef | None = None  # the set in Ray's object store, for the GPU workers
        self.gpu_workers: list[ray.actor.ActorHandle] = []
        self.idle: queue.SimpleQueue = queue.SimpleQueue()
        self.workers_alive = 0
        self.lock = threading.Lock()

    def call(self, fn: Callable[..., T], *args: object) -> T:
        return _wait_for(self.task.remote(fn, *args))

    def open_on_gpus(self, name: str, context: MethodContext) -> _GpuMethod:
        """Method ``name`` built from its name and options and prepared on every GPU (the first GPU method starts the
        workers). A worker that dies loading it (out of memory, say) leaves the rotation; with none left, the method
        is unavailable, so the run lists it as not computed and goes on."""
        import ray

        if self.shared_set is None:
            count = int(ray.cluster_resources().get("GPU", 0))
            if not count:
                raise MethodUnavailable(f"{name} needs a GPU and the Ray cluster has none")
            # No CPU of its own: Ray would hold one for the actor's lifetime, and where a cluster has no more CPUs
            # than GPUs the metrics' tasks would then wait for ever.
            worker = ray.remote(num_gpus=1, num_cpus=0)(_GpuWorker)
            self.gpu_workers, self.shared_set = [worker.remote() for _ in range(count)], ray.put(self.bench_set)
        if not self.gpu_workers:
            raise MethodUnavailable(f"{name} needs a GPU worker, and every one died loading an earlier method")
        shipped = replace(context, cache=None, ledger=None, transport=None)  # the driver's own: they stay here
        opening = [actor.open.remote(name, dict(REGISTRY), shipped, self.shared_set) for actor in self.gpu_workers]
        settings, survivors, deaths = [], [], []
        for actor, opened in zip(self.gpu_workers, opening):
            try:
                settings.append(_wait_for(opened))
                survivors.append(actor)
            except ray.exceptions.ActorDiedError as error:
                deaths.append(_first_line(error))
        self.gpu_workers, self.workers_alive, self.idle = survivors, len(survivors), queue.SimpleQueue()
        for actor in survivors:  # a fresh rotation: no cell runs while methods open
            self.idle.put(actor)
        if not survivors:
            raise MethodUnavailable(f"every GPU worker of the Ray cluster died loading {name} (out of memory?): {deaths[0]}")
        if deaths:
            self.log(f"{len(deaths)} GPU worker(s) died loading {name}; it runs on the {len(survivors)} left")
        return _GpuMethod(name, settings[0], self)

    def run_on_gpu(self, name: str, sample: Sample) -> Image.Image:
        """``name`` on ``sample`` on an idle GPU worker. A worker that dies (its node lost) leaves the rotation, so
        only its cell in flight fails; with none left, GPU cells fail at once instead of waiting for ever.
        (`ray.util.ActorPool` hands each result to whichever thread asks next, not to the one that submitted.)"""
        import ray

        actor = self.idle.get()
        if actor is None:
            self.idle.put(None)
            raise RuntimeError("every GPU worker of the Ray cluster has died; rerun to make these cells")
        try:
            image = _wait_for(actor.run.remote(name, sample))
        except ray.exceptions.ActorDiedError:
            with self.lock:
                self.workers_alive -= 1
                if not self.workers_alive:
                    self.idle.put(None)  # wakes the cells waiting for a worker: they fail
            raise
        except Exception:
            self.idle.put(actor)
            raise
        self.idle.put(actor)
        return image

    def close(self) -> None:
        import ray

        for actor in self.gpu_workers:
            ray.kill(actor)


class _GpuWorker:
    """A Ray actor holding one GPU and a copy of every GPU method of the run, as a local run holds them on its device."""

    def __init__(self) -> None:
        self.methods: dict[str, Method] = {}

    def open(self, name: str, registry: dict[str, str], context: MethodContext, bench_set: BenchSet) -> dict:
        """Build ``name`` as the driver's ``registry`` says (methods registered at run time included) and prepare it
        here: its model loads on this GPU. Its settings key its cells."""
        REGISTRY.update(registry)
        method = get_method(name, context)
        method.prepare(bench_set)
        self.methods[name] = method
        return method.settings()

    def run(self, name: str, sample: Sample) -> Image.Image:
        return self.methods[name].run(sample)


@dataclass
class _GpuMethod:
    """A GPU method of a Ray run, as `_Run` uses a method: each sample goes to an idle GPU worker."""

    name: str
    opened: dict
    cluster: _RayCluster
    runs_on = "gpu"

    def settings(self) -> dict:
        return self.opened

    def run(self, sample: Sample) -> Image.Image:
        return self.cluster.run_on_gpu(self.name, sample)

    def close(self) -> None:
        """Nothing: its copies go with the GPU workers, which the run stops at its end."""


def _apply(fn: Callable[..., T], *args: object) -> T:
    """``fn(*args)``: the one remote function of a Ray run (a bound method travels with its object)."""
    return fn(*args)


def _wait_for(refs: object) -> Any:
    """``ray.get(refs)``, raising what the remote code raised as itself: its cell records one line, not Ray's traceback."""
    import ray

    try:
        return ray.get(refs)
    except ray.exceptions.RayTaskError as error:
        raise error.cause from None


def _open_cache(folder: str | None):
    from seminft_bench.vlm import ResponseCache
    from seminft_bench.vlm.cache import default_cache_dir

    return ResponseCache(folder or default_cache_dir())


def _out_of_memory(error: BaseException) -> bool:
    """PyTorch's out-of-memory error, on any device. Whatever raised it imported torch; nothing else needs to."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(error, torch.OutOfMemoryError)


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def _message(error: BaseException) -> str:
    """The error as one line, with the value of every key-like environment variable redacted."""
    from seminft_bench.vlm.transport import redact

    secrets = [value for name, value in os.environ.items() if _SECRET_NAME.search(name) and len(value) >= 8]
    return redact(f"{type(error).__name__}: {error}", tuple(secrets))


def _plain(value: object) -> float | bool:
    """A metric's one value (a numpy scalar or 1-element array) as the JSON-safe Python value."""
    array = np.asarray(value)
    return array.reshape(-1)[0].item() if array.size == 1 else array.tolist()
