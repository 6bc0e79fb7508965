"""An on-disk cache of judge replies, so finished work is never asked (or paid for) twice.

SQLite in WAL mode: any number of threads and processes may read and write one cache
folder at once; a writer waits for the lock instead of failing. Only successful,
parsed replies are stored; failures are asked again on the next run.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

CACHE_FILE = "vlm_replies.sqlite3"


def cache_key(
    provider: str,
    model: str,
    template_version: str,
    images: Sequence[bytes],
    params: Mapping[str, object],
    *,
    endpoint: str,
) -> str:
    """SHA-256 over everything that determines a reply: who answers, which prompt, which images in which order, how.

    ``endpoint`` is where the model is served (a base URL, ``"local:…"``): two servers of one model
    id may run other weights or settings, so each keeps its own replies.
    """
    digest = hashlib.sha256()
    header = {
        "provider": provider,
        "model": model,
        "endpoint": endpoint,
        "template": template_version,
        "params": params,
    }
    digest.update(json.dumps(header, sort_keys=True, separators=(",", ":")).encode())
    for image in images:
        digest.update(hashlib.sha256(image).digest())
    return digest.hexdigest()


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/seminft-bench/vlm`` (``~/.cache/…`` when unset)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "seminft-bench" / "vlm"


class ResponseCache:
    """Maps `cache_key` → a JSON-safe record (parsed result, raw text, usage). Thread- and process-safe."""

    def __init__(self, folder: str | os.PathLike, busy_timeout_s: float = 60.0):
        self.path = Path(folder) / CACHE_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # durable across process crashes; WAL keeps it consistent
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS replies (key TEXT PRIMARY KEY, record TEXT NOT NULL, created REAL)"
        )

    def get(self, key: str) -> dict | None:
        with self._lock:
            row = self._db.execute("SELECT record FROM replies WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    def put(self, key: str, record: Mapping[str, object]) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO replies (key, record, created) VALUES (?, ?, ?)",
                (key, json.dumps(record, sort_keys=True), time.time()),
            )

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM replies").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> ResponseCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
