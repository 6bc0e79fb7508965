"""The benchmark at scale (issue 20): fresh run, rerun and report against the number of samples, and the report
alone on finished run folders up to 100,000 samples; growth exponents, peak RSS and the issue's targets.

    .venv/bin/python benchmarks/bench_scale.py [--run-sizes 100,1000,10000] [--image-size 64]
                                               [--report-sizes 1000,10000,100000]

Runs: a folder set of N samples (source, reference and target of ``--image-size``² px: crops of
scikit-image's photos that are not flat, reference and target graded by a built-in preset) goes through
``seminft-bench run`` with the classical methods identity, reinhard, mkl and histogram, the
weight-free metrics psnr, ssim, color and structure and no judge (fresh); the same command
again on the finished folder (rerun); then ``seminft-bench report`` on it. Also timed, in this
process: loading the set as a fresh run does (every image decoded) and as a rerun can
(`load_bench_set(known_good=...)` with the fingerprints the folder's run.json records).
Reports: finished run folders of N samples × 8 methods with those four metrics are written
directly (results.jsonl through `ResultsFile`, each cell under its `cell_key`; oracle's PSNR
infinite, as an exact copy's is; one cell in 1,000 failed), and ``seminft-bench report``
rebuilds their reports.

Every command is its own process, started by a small one (`STARTER`): wall-clock seconds, and its peak RSS
from ``os.wait4``.
The growth exponent is the log-log slope of seconds between consecutive sizes (1: linear).
Targets (issue 20): every exponent ≤ 1.1 from 1,000 samples up; the report at 100,000
samples × 8 methods under 60 s and 3 GB; a rerun of a finished run at most 2% of the fresh run.
"""

import argparse
import json
import math
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import skimage.data
from PIL import Image

from seminft_bench.bench.datasets import load_bench_set
from seminft_bench.bench.metrics import MetricSettings, get_metric
from seminft_bench.bench.results import ResultsFile, cell_key, new_record, settings_hash
from seminft_bench.bench.runner import sample_fingerprint
from seminft_bench.presets import apply_lut, builtin_presets

RUN_METHODS = ["identity", "reinhard", "mkl", "histogram"]
REPORT_METHODS = ["identity", "reference", "oracle", "reinhard", "mkl", "idt", "histogram", "ours"]
METRICS = ["psnr", "ssim", "color", "structure"]
PHOTOS = ["astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field", "retina"]
BENCH = Path(sys.executable).parent / "seminft-bench"
MAX_EXPONENT, REPORT_SECONDS, REPORT_GB, RERUN_SHARE = 1.1, 60.0, 3.0, 0.02


STARTER = """
import os, subprocess, sys, time
started = time.perf_counter()
process = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(process.pid, 0)
with open(sys.argv[1], "w") as out:
    out.write(f"{time.perf_counter() - started} {usage.ru_maxrss}")
sys.exit(os.waitstatus_to_exitcode(status))
"""
"""Starts a command, then writes its seconds and peak RSS (KiB) to a file. On Linux a child's peak RSS counts its
parent's peak before the spawn (the child runs in the parent's memory, or a copy, until it execs): spawned by this
script once it has held gigabytes (writing the finished run of 100,000 samples: 2.4 GB), every command reported those."""


def measured(command: list[str], log: Path) -> tuple[float, float]:
    """Run ``command`` to its end through `STARTER`: (wall seconds, peak RSS in GB). Its output goes to ``log``."""
    figures = log.with_suffix(".figures")
    with log.open("w") as output:
        returncode = subprocess.run([sys.executable, "-c", STARTER, str(figures), *command], stdout=output, stderr=subprocess.STDOUT).returncode
    if returncode != 0:
        raise SystemExit(f"{' '.join(command)} exited {returncode}:\n{log.read_text()[-3000:]}")
    seconds, kib = figures.read_text().split()
    return float(seconds), int(kib) * 1024 / 1e9


def folder_set(root: Path, samples: int, size: int, seed: int = 0) -> Path:
    """``samples`` (source, reference, target) PNG triples: photo crops; reference and target graded by one preset."""
    rng = np.random.default_rng(seed)
    photos = [getattr(skimage.data, name)() for name in PHOTOS]
    luts = [preset.to_lut() for preset in builtin_presets()[:8]]

    def crop() -> np.ndarray:
        while True:
            photo = photos[rng.integers(len(photos))]
            side = int(rng.integers(size, min(photo.shape[:2]) + 1))
            top, left = (int(rng.integers(0, photo.shape[axis] - side + 1)) for axis in (0, 1))
            pixels = np.asarray(Image.fromarray(photo[top : top + side, left : left + side]).resize((size, size)))
            if pixels.std() >= 8:  # not a flat patch of sky: its regrades would have no structure (NaN, a failed cell)
                return pixels

    for role in ("source", "reference", "target"):
        (root / role).mkdir(parents=True)
    for i in range(samples):
        source, other, lut = crop(), crop(), luts[i % len(luts)]
        for role, pixels in (("source", source), ("reference", apply_lut(other, lut)), ("target", apply_lut(source, lut))):
            Image.fromarray(pixels).save(root / role / f"{i:06d}.png")
    return root


def finished_run(out: Path, samples: int, seed: int = 0) -> Path:
    """A run folder as `seminft-bench run` leaves it (results.jsonl and run.json; no images) for 8 methods."""
    rng = np.random.default_rng(seed)
    settings = {
        "methods": {method: {"method": method} for method in REPORT_METHODS},
        "metrics": {name: get_metric(name).settings(MetricSettings()) for name in METRICS},
        "judges": {},
    }
    keys = {kind: {name: settings_hash(s) for name, s in entries.items()} for kind, entries in settings.items()}
    names = [f"{i:06d}" for i in range(samples)]
    results = ResultsFile(out / "results.jsonl")
    for m, method in enumerate(REPORT_METHODS):
        values = {
            "psnr": np.full(samples, math.inf) if method == "oracle" else rng.normal(20 + m, 3, samples),
            "ssim": np.clip(rng.normal(0.7 + 0.02 * m, 0.1, samples), 0, 1),
            "color": np.abs(rng.normal(12 - m, 4, samples)),
            "structure": np.clip(rng.normal(0.9, 0.05, samples), -1, 1),
        }
        failed = rng.random(samples) < 0.001
        for i, sample in enumerate(names):
            record = new_record(sample, method)
            record["output"] = f"outputs/{method}/{sample}.png"
            record["keys"]["generate"] = keys["methods"][method]
            for name in METRICS:
                cell = f"metric:{name}"
                if failed[i] and name == "ssim":
                    record["errors"][cell] = "ValueError: planted failure"
                    continue
                record["metrics"][name] = float(values[name][i])
                record["keys"][cell] = cell_key(keys, method, cell)
            results.records[sample, method] = record
    results.compact()
    info = {
        "identity": {"dataset": "synthetic", "split": "test", "variant": None, "samples": {n: "0" * 16 for n in names}},
        "dataset": "synthetic", "samples": names, "skipped": [], "has_targets": True, "methods": REPORT_METHODS,
        "judges": [], "reward": None, "metrics": METRICS, "dino_threshold": 0.7, "settings": settings, "keys": keys,
        "not_computed": {},
    }  # fmt: skip
    (out / "run.json").write_text(json.dumps(info, indent=2))
    return out


def load_seconds(root: Path, run: Path) -> tuple[float, float]:
    """Seconds to load the set decoding every image, and vouching with the run folder's fingerprints instead."""
    recorded = json.loads((run / "run.json").read_text())["identity"]["samples"]
    started = time.perf_counter()
    load_bench_set(root)
    decoding = time.perf_counter() - started
    started = time.perf_counter()
    load_bench_set(root, known_good=lambda sample: recorded.get(sample.name) == sample_fingerprint(sample))
    return decoding, time.perf_counter() - started


def exponents(sizes: list[int], seconds: list[float]) -> list[float]:
    """Log-log slope of ``seconds`` between consecutive sizes."""
    return [math.log(t2 / t1) / math.log(n2 / n1) for (n1, t1), (n2, t2) in zip(zip(sizes, seconds), zip(sizes[1:], seconds[1:]))]


def sizes_option(text: str) -> list[int]:
    return sorted(int(part) for part in text.split(",") if part.strip())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-sizes", type=sizes_option, default=[100, 1000, 10000], help="Samples of the runs.")
    parser.add_argument("--report-sizes", type=sizes_option, default=[1000, 10000, 100000], help="Samples of the reports alone.")
    parser.add_argument("--image-size", type=int, default=64, help="Side of the runs' square images in px.")
    args = parser.parse_args()
    verdicts: list[tuple[str, bool | None]] = []

    def check_exponents(label: str, sizes: list[int], seconds: list[float]) -> None:
        pairs = [(n1, n2, e) for n1, n2, e in zip(sizes, sizes[1:], exponents(sizes, seconds)) if n1 >= 1000]
        if not pairs:
            verdicts.append((f"{label}: exponent ≤ {MAX_EXPONENT} from 1,000 up (not measured: no two sizes ≥ 1,000)", None))
        for n1, n2, e in pairs:
            verdicts.append((f"{label}: exponent {n1}→{n2} = {e:.2f} ≤ {MAX_EXPONENT}", e <= MAX_EXPONENT))

    with tempfile.TemporaryDirectory(prefix="bench_scale") as tmp:
        tmp = Path(tmp)
        print(f"runs: {args.image_size}² images; methods {', '.join(RUN_METHODS)}; metrics {', '.join(METRICS)}; no judge")
        print(f"{'N':>7} {'fresh s':>9} {'rerun s':>9} {'report s':>9} {'fresh GB':>9} {'rerun GB':>9} {'report GB':>10} "
              f"{'rerun/fresh':>12} {'load s':>7} {'vouched':>8}")  # fmt: skip
        runs = {}
        for n in args.run_sizes:
            root, out = folder_set(tmp / f"set{n}", n, args.image_size), tmp / f"run{n}"
            command = [str(BENCH), "run", "--dataset", str(root), "--method", ",".join(RUN_METHODS), "--judges", "",
                       "--reward", "", "--metrics", ",".join(METRICS), "--out", str(out), "--cache", str(tmp / "cache")]  # fmt: skip
            fresh, rerun = measured(command, tmp / "fresh.log"), measured(command, tmp / "rerun.log")
            report = measured([str(BENCH), "report", str(out)], tmp / "report.log")
            runs[n] = fresh, rerun, report
            decoding, vouched = load_seconds(root, out)
            print(f"{n:>7} {fresh[0]:>9.2f} {rerun[0]:>9.2f} {report[0]:>9.2f} {fresh[1]:>9.2f} {rerun[1]:>9.2f} "
                  f"{report[1]:>10.2f} {rerun[0] / fresh[0]:>11.1%} {decoding:>7.2f} {vouched:>8.2f}")  # fmt: skip
            shutil.rmtree(root)
            shutil.rmtree(out)
        sizes = list(runs)
        for i, label in enumerate(("fresh run", "rerun", "report")):
            seconds = [runs[n][i][0] for n in sizes]
            print(f"  {label} exponents: " + ", ".join(f"{a}→{b} {e:.2f}" for a, b, e in zip(sizes, sizes[1:], exponents(sizes, seconds))))
            check_exponents(label, sizes, seconds)
        for n in sizes:
            if n >= 1000:
                share = runs[n][1][0] / runs[n][0][0]
                verdicts.append((f"rerun at {n} = {share:.1%} of the fresh run ≤ {RERUN_SHARE:.0%}", share <= RERUN_SHARE))

        print(f"\nreports alone: finished run folders of N samples × {len(REPORT_METHODS)} methods, {len(METRICS)} metrics")
        print(f"{'N':>7} {'write s':>9} {'jsonl MB':>9} {'report s':>9} {'report GB':>10}")
        reports = {}
        for n in args.report_sizes:
            started = time.perf_counter()
            out = finished_run(tmp / f"finished{n}", n)
            written = time.perf_counter() - started
            reports[n] = measured([str(BENCH), "report", str(out)], tmp / "report.log")
            megabytes = (out / "results.jsonl").stat().st_size / 1e6
            print(f"{n:>7} {written:>9.1f} {megabytes:>9.1f} {reports[n][0]:>9.2f} {reports[n][1]:>10.2f}")
            shutil.rmtree(out)
        sizes = list(reports)
        seconds = [reports[n][0] for n in sizes]
        print("  report exponents: " + ", ".join(f"{a}→{b} {e:.2f}" for a, b, e in zip(sizes, sizes[1:], exponents(sizes, seconds))))
        check_exponents(f"report of {len(REPORT_METHODS)} methods", sizes, seconds)
        if 100_000 in reports:
            seconds, gigabytes = reports[100_000]
            verdicts.append((f"report at 100,000 × 8: {seconds:.1f} s < {REPORT_SECONDS:.0f} s", seconds < REPORT_SECONDS))
            verdicts.append((f"report at 100,000 × 8: {gigabytes:.2f} GB < {REPORT_GB:.0f} GB", gigabytes < REPORT_GB))

    print("\ntargets:")
    for text, passed in verdicts:
        print(f"  {'not run' if passed is None else 'PASS' if passed else 'FAIL':<7} {text}")


if __name__ == "__main__":
    main()
