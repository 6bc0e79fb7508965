"""Files that survive kills: atomic writes, an append-only JSON-lines store, and a one-writer folder lock."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

_writes = threading.Condition()
_writes_in_flight = 0
_writes_closed = False


@contextmanager
def _write_slot():
    """Count a write in flight; once `close_writes` ran, block forever (the process is leaving)."""
    global _writes_in_flight
    with _writes:
        _writes.wait_for(lambda: not _writes_closed)
        _writes_in_flight += 1
    try:
        yield
    finally:
        with _writes:
            _writes_in_flight -= 1
            _writes.notify_all()


def close_writes(timeout: float = 5.0) -> bool:
    """Before ``os._exit``: let the writes in flight in other threads finish and hold back new ones.

    A job that leaves with ``os._exit`` (Ctrl-C while threads still run) would otherwise cut
    a worker's atomic write between its temporary file and the rename. Returns whether every
    write finished within ``timeout`` seconds.
    """
    global _writes_closed
    with _writes:
        _writes_closed = True
        return _writes.wait_for(lambda: _writes_in_flight == 0, timeout)


@contextmanager
def _atomic_file(path: Path) -> Iterator[BinaryIO]:
    """A binary file to write that replaces ``path`` by an atomic rename when the block ends, and never if it raises."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with _write_slot():
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder and an atomic rename."""
    path = Path(path)
    with _atomic_file(path) as f:
        f.write(data)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """UTF-8 text with ``\\n`` line ends, written atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def remove_partial_writes(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files of `atomic_write_bytes` that a killed writer left anywhere under ``folder``.

    Call it only while holding the folder's `FolderLock`: the temporary files of a live writer look the same.
    Returns what was removed."""
    removed = [path for path in Path(folder).rglob(".*.tmp") if path.is_file()]
    for path in removed:
        path.unlink(missing_ok=True)
    return removed


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class FolderLocked(RuntimeError):
    """Another live process is writing the folder."""


class FolderLock:
    """One writer per folder: ``FOLDER/.lock`` holds the writer's pid under an exclusive `fcntl.flock`.

    The kernel drops a flock when its process dies, however it dies (``kill -9`` included), so
    a lock left by a dead writer is simply taken over; the pid in the file only names the
    live writer in the error. Use as a context manager around the whole job.
    """

    def __init__(self, folder: str | os.PathLike, job: str = "job"):
        self.path = Path(folder) / ".lock"
        self.job = job
        self._file = None

    def acquire(self) -> FolderLock:
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+", encoding="utf-8")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise FolderLocked(
                f"{self.path.parent} is being written by another {self.job} (pid {holder}); wait for it to "
                "finish, or write to another folder"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._file = handle
        return self

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # closing drops the flock; the file stays, harmless and reused
            self._file = None

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


class JsonLines:
    """An append-only JSON-lines file that any number of kills in a row leave readable.

    Opening it repairs it: a line that is not a complete JSON object (the tail a killed
    write left, or anything else unreadable) is dropped and the file rewritten atomically
    before anything is appended, so a torn fragment can never be glued to the next record.
    Each `append` writes one whole line and flushes it to the OS (a killed process loses
    nothing it appended) and fsyncs it (nor does a power cut). Not thread-safe: callers lock.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.dropped = 0
        """Lines the last repair dropped."""

    def read(self) -> list[dict]:
        """Every complete record in file order, after repairing the file on disk if it needed it.

        Read line by line, and the records share their repeated strings (keys, and values such as method
        names and settings hashes): a results file of 800,000 records (366 MB), read whole with every
        string its own copy, took 3.8 GB; this way 0.9 GB. A repair copies the kept lines line by line too.
        """
        if not self.path.exists():
            return []
        share = {}.setdefault  # share(s, s): the first string equal to s read so far

        def shared(pairs: list[tuple[str, object]]) -> dict:
            return {share(k, k): share(v, v) if type(v) is str else v for k, v in pairs}

        decoder = json.JSONDecoder(object_pairs_hook=shared)
        records, left_out, dropped, last = [], set(), 0, b"\n"
        with self.path.open("rb") as f:
            for number, last in enumerate(f, 1):
                line = last[:-1] if last.endswith(b"\n") else last
                if not line.strip():
                    left_out.add(number)
                    continue
                try:  # what json.loads does with bytes, with the decoder that shares strings
                    record = decoder.decode(line.decode(json.detect_encoding(line), "surrogatepass"))
                    if not isinstance(record, dict):
                        raise ValueError("not an object")
                except ValueError:
                    dropped += 1
                    left_out.add(number)
                    warnings.warn(f"{self.path}:{number}: dropping an incomplete or unreadable line", stacklevel=2)
                    continue
                records.append(record)
        if left_out or not last.endswith(b"\n"):  # torn lines, or an unterminated last line
            self._keep_lines(len(records) + len(left_out), left_out)
        self.dropped = dropped
        return records

    def _keep_lines(self, lines: int, left_out: set[int]) -> None:
        """Rewrite the file atomically with its first ``lines`` lines but those ``left_out``, each ending in a newline."""
        with self.path.open("rb") as f, _atomic_file(self.path) as out:
            for number, line in enumerate(f, 1):
                if number > lines:
                    break
                if number not in left_out:
                    out.write(line if line.endswith(b"\n") else line + b"\n")

    def append(self, record: dict) -> None:
        line = json.dumps(record, sort_keys=True, ensure_ascii=False) + "\n"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with _write_slot(), self.path.open("a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())

    def keep_latest(self, fields: tuple[str, ...], order: Callable[[dict], object] | None = None) -> dict[tuple, dict]:
        """Compact the file: the last record per value of ``fields`` (records lacking one are dropped), sorted
        by ``order`` (default: those values), rewritten atomically. Returns them by key, in that order."""
        latest = {tuple(r[f] for f in fields): r for r in self.read() if all(f in r for f in fields)}
        ordered = dict(sorted(latest.items(), key=lambda item: order(item[1]) if order else item[0]))
        if self.path.exists():
            self.rewrite(list(ordered.values()))
        return ordered

    def rewrite(self, records: list[dict]) -> Path:
        """Replace the whole file atomically (compaction), a line at a time: not the whole text and its bytes at once."""
        with _atomic_file(self.path) as f:
            for r in records:
                f.write((json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8"))
        return self.path
