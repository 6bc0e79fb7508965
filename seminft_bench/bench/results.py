"""``results.jsonl``: one record per (sample, method), appended as cells finish, compacted at the end.

A record is ``{"sample", "method", "output", "scores": {judge: score|null}, "reasoning":
{judge: text}, "reward", "metrics": {name: value}, "errors": {cell: message}}``. While a run
is going every update appends the record's whole current state, so a killed run loses at
most the line being written; reading keeps the last line per key and ignores a torn last
line. PSNR of identical images is infinite and is written as ``Infinity`` (Python's
`json` reads it back). `ResultsFile.compact` rewrites the file atomically with exactly one line per key.
"""

from __future__ import annotations

import json
import os
import threading
import warnings
from pathlib import Path

from seminft_bench.fileio import atomic_write_text

Key = tuple[str, str]


def new_record(sample: str, method: str) -> dict:
    return {
        "sample": sample,
        "method": method,
        "output": None,
        "scores": {},
        "reasoning": {},
        "reward": None,
        "metrics": {},
        "errors": {},
    }


def read_records(path: str | os.PathLike) -> dict[Key, dict]:
    """The latest record per (sample, method); a missing file is an empty run."""
    path = Path(path)
    records: dict[Key, dict] = {}
    if not path.exists():
        return records
    lines = path.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            key = (record["sample"], record["method"])
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            if number == len(lines):  # a run killed mid-write leaves a torn last line
                warnings.warn(f"{path}:{number}: ignoring an incomplete last line", stacklevel=2)
                continue
            raise ValueError(f"{path}:{number}: not a results record ({error})") from error
        records[key] = {**new_record(*key), **record}
    return records


class ResultsFile:
    """Thread-safe, append-as-you-go store of the run's records."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.records = read_records(self.path)
        self._lock = threading.Lock()

    def record(self, sample: str, method: str) -> dict:
        """The record of (sample, method), created empty if new (not written until `update`)."""
        with self._lock:
            return self.records.setdefault((sample, method), new_record(sample, method))

    def update(self, sample: str, method: str, change) -> dict:
        """Apply ``change(record)`` under the lock and append the new state."""
        with self._lock:
            record = self.records.setdefault((sample, method), new_record(sample, method))
            change(record)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(record, sort_keys=True) + "\n")
            return record

    def compact(self) -> Path:
        """One line per (sample, method), sorted, written atomically."""
        with self._lock:
            lines = [json.dumps(self.records[key], sort_keys=True) + "\n" for key in sorted(self.records)]
            return atomic_write_text(self.path, "".join(lines))
