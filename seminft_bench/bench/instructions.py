"""JarvisArt's first step (paper App. C): a VLM looks at each sample's source and reference and writes the
retouching instruction that an instruction-following retoucher takes instead of a reference image.

``seminft-bench instructions`` writes one JSON line per sample (``name``, ``instruction``, the writer
and its settings, usage), appended as each finishes, so a killed run loses nothing finished and a
rerun asks only for what is missing or failed; a changed writer or prompt writes again. The
retoucher's outputs come back into the benchmark as ``predictions:DIR``. The prompt is ours
(`vlm.writer.INSTRUCTION_PROMPT`): App. C does not print it.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from seminft_bench.bench.samples import BenchSet
from seminft_bench.fileio import JsonLines
from seminft_bench.vlm.batch import add_costs
from seminft_bench.vlm.writer import Writer


@dataclass
class InstructionsSummary:
    samples: int
    done_before: int
    written: int
    failed: int
    costs_path: Path


def writer_key(writer: Writer) -> str:
    """A short hash of what decides the text (writer, model, endpoint, prompt version, settings)."""
    return hashlib.sha256(json.dumps(writer.settings(), sort_keys=True).encode()).hexdigest()[:16]


def write_instructions(
    bench_set: BenchSet, writer: Writer, out: str | os.PathLike, *, concurrency: int = 8, progress: bool = True
) -> InstructionsSummary:
    """An instruction per sample of ``bench_set`` in the JSON-lines file ``out``, skipping those already there."""
    store = JsonLines(out)
    key, settings = writer_key(writer), writer.settings()
    done = {r["name"] for r in store.read() if r.get("writer_key") == key and r.get("instruction") is not None}
    todo = [sample for sample in bench_set.samples if sample.name not in done]
    failed = 0
    try:
        with ThreadPoolExecutor(concurrency) as pool, tqdm(total=len(todo), disable=not progress, unit="sample") as bar:
            futures = [pool.submit(writer.write, s.name, (s.image("source"), s.image("reference"))) for s in todo]
            for future in as_completed(futures):
                written = future.result()
                record = written.to_record()
                store.append({"name": record.pop("name"), "instruction": record.pop("text"), "writer_key": key,
                              "settings": settings, **record})  # fmt: skip
                failed += written.text is None
                bar.update()
                bar.set_postfix(failed=failed)
    finally:
        rank = {sample.name: i for i, sample in enumerate(bench_set.samples)}  # the set's order
        store.keep_latest(("name", "writer_key"), order=lambda r: (rank.get(r["name"], len(rank)), r["name"], r["writer_key"]))
        costs = add_costs(out, writer.ledger)
    return InstructionsSummary(len(bench_set.samples), len(done), len(todo) - failed, failed, costs)
