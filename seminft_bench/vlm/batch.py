"""Score a folder of outputs against a folder of references (``seminft-bench judge``).

Pairs are matched by file stem. Results go to a JSON-lines file, one line per pair
and judge, kept as the benchmark's results are (`seminft_bench.fileio.JsonLines`): each
line is appended and fsynced as soon as its pair is done, a torn line a kill left is
dropped when the file is opened, so any number of kills loses nothing finished, and a
rerun skips every pair that already has a score (failures are asked again). When the
run ends the file is rewritten atomically with the latest line per pair, sorted. The cost ledger lands beside it as
``<results>.costs.json``, added to what earlier runs spent.
"""

from __future__ import annotations

import os
from concurrent.futures import as_completed
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from seminft_bench.fileio import JsonLines
from seminft_bench.imaging import IMAGE_SUFFIXES
from seminft_bench.vlm.costs import CostLedger
from seminft_bench.vlm.judge import Judge, Pair


RECORD_KEY = ("judge", "mode", "name")
"""One result line per judge, mode and pair; the last one counts."""


@dataclass
class BatchSummary:
    pairs: int  # matched pairs
    done_before: int  # already scored by an earlier run
    scored: int  # scored in this run
    failed: int  # still without a score (a rerun asks again)
    unmatched: list[str]  # file stems present in one folder only
    run_ledger: CostLedger  # this run's costs
    costs_path: Path  # all runs' costs


def pairs_by_stem(references: str | os.PathLike, predictions: str | os.PathLike) -> tuple[list[Pair], list[str]]:
    """The pairs whose image file stems match, by name; and the stems found in only one folder."""
    refs, preds = _images_by_stem(Path(references)), _images_by_stem(Path(predictions))
    pairs = [Pair(stem, refs[stem], preds[stem]) for stem in sorted(refs.keys() & preds.keys())]
    return pairs, sorted(refs.keys() ^ preds.keys())


def _images_by_stem(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: not a folder")
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in IMAGE_SUFFIXES or path.name.startswith("."):
            continue
        if path.stem in found:
            other = found[path.stem].name
            raise ValueError(f"{folder}: two images share the stem {path.stem!r} ({other}, {path.name})")
        found[path.stem] = path
    return found


def costs_path_for(results: str | os.PathLike) -> Path:
    return Path(results).with_suffix(".costs.json")


def judge_folders(
    judge: Judge,
    references: str | os.PathLike,
    predictions: str | os.PathLike,
    results: str | os.PathLike,
    *,
    progress: bool = True,
) -> BatchSummary:
    """Judge every matched pair not yet scored in ``results`` (JSON lines), appending as they finish."""
    pairs, unmatched = pairs_by_stem(references, predictions)
    if not pairs:
        raise ValueError(f"no image in {predictions} has a reference of the same name in {references}")
    store = JsonLines(results)
    records = store.keep_latest(RECORD_KEY)  # also drops a line a killed run left half-written
    done = {key for key, record in records.items() if record["error"] is None}  # keys: (judge, mode, name)
    todo = [pair for pair in pairs if (judge.name, judge.mode, pair.name) not in done]
    failed = 0
    try:
        with tqdm(total=len(todo), disable=not progress, unit="pair") as bar:
            for future in as_completed([judge.submit(pair) for pair in todo]):
                judgement = future.result()
                store.append(judgement.to_record())
                failed += judgement.error is not None
                bar.update()
                bar.set_postfix(failed=failed)
    finally:
        judge.close()
        store.keep_latest(RECORD_KEY)
        costs = add_costs(results, judge.ledger)
    return BatchSummary(len(pairs), len(pairs) - len(todo), len(todo) - failed, failed, unmatched, judge.ledger, costs)


def add_costs(results: str | os.PathLike, ledger: CostLedger) -> Path:
    """Add this run's ``ledger`` to what earlier runs spent, in ``<results>.costs.json``; returns that file."""
    costs = costs_path_for(results)
    total = CostLedger.read(costs, ledger.prices) if costs.exists() else CostLedger(ledger.prices)
    total.add(ledger)
    total.write(costs)
    return costs
