"""The demo benchmark run with its stages overlapped, against the sum of the stages run one after another.

    .venv/bin/python benchmarks/bench_run.py [--latency 0.5] [--concurrency 16]

Dataset ``demo`` (8 samples), the bounds and the four classical methods, metrics PSNR and
SSIM (the ones with no weights to fetch), and one judge (gpt-4o) pointed at a local
test server that answers every request after ``--latency`` seconds, as a remote API would.
Each stage alone is timed in its own run folder: generation only; then metrics only on
those outputs; then the judge only. Their sum is what a runner that finishes one stage
before starting the next would take. The overlapped run is a fresh, complete run with a
fresh reply cache. Printed: each time and the overlap gain (sum of stages / overlapped).
"""

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from seminft_bench.bench.datasets import load_bench_set
from seminft_bench.bench.runner import RunOptions, run_benchmark
from seminft_bench.vlm.testserver import Answer, PlantedServer

METHODS = ["identity", "reference", "oracle", "reinhard", "mkl", "idt", "histogram"]
METRICS = ["psnr", "ssim"]
KEY = "sk-bench-run-0123456789"


def timed_run(out: Path, cache: Path, config: Path, bench_set, **options) -> float:
    started = time.perf_counter()
    run_benchmark(
        out,
        RunOptions(methods=METHODS, reward=None, cache=str(cache), judge_config=str(config), **options),
        bench_set=bench_set,
        log=lambda line: None,
    )
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", type=float, default=0.5, help="Seconds the test server takes per judge reply.")
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    os.environ["OPENAI_API_KEY"] = KEY
    bench_set = load_bench_set("demo")
    answer = Answer(json.dumps({"score": 3, "reasoning": "planted"}))
    with PlantedServer(lambda seen: answer, latency=args.latency) as server, tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        config = tmp / "judges.toml"
        config.write_text(f'[judges.gpt-4o]\nbase_url = "{server.openai_url}"\n')
        common = dict(concurrency=args.concurrency)
        stages = {
            "generate": timed_run(tmp / "staged", tmp / "cache-staged", config, bench_set, judges=[], metrics=[], **common),
            "metrics": timed_run(tmp / "staged", tmp / "cache-staged", config, bench_set, judges=[], metrics=METRICS, **common),
            "judge": timed_run(tmp / "staged", tmp / "cache-staged", config, bench_set, judges=["gpt-4o"], metrics=METRICS, **common),
        }
        calls_staged = server.calls
        server.reset_counts()
        overlapped = timed_run(tmp / "overlapped", tmp / "cache-overlapped", config, bench_set, judges=["gpt-4o"], metrics=METRICS, **common)
        assert server.calls == calls_staged, (server.calls, calls_staged)
    cells = len(bench_set) * len(METHODS)
    print(f"demo: {len(bench_set)} samples x {len(METHODS)} methods = {cells} cells; judge latency {args.latency} s, concurrency {args.concurrency}")
    for stage, seconds in stages.items():
        print(f"  {stage:<9} alone: {seconds:6.2f} s")
    total = sum(stages.values())
    print(f"  sum of stages:   {total:6.2f} s")
    print(f"  overlapped run:  {overlapped:6.2f} s")
    print(f"overlap gain: {total / overlapped:.2f}x")


if __name__ == "__main__":
    main()
