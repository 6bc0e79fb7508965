"""Durable files: the JSON-lines store survives torn writes in any number, the folder lock admits one writer."""

import json
import os
import subprocess
import sys

import pytest

from seminft_bench.bench.results import ResultsFile, read_records
from seminft_bench.fileio import FolderLock, FolderLocked, JsonLines, remove_partial_writes


def record(sample, n):
    return {"sample": sample, "method": "m", "metrics": {"psnr": n}}


def test_torn_lines_anywhere_are_dropped_and_the_file_repaired(tmp_path):
    path = tmp_path / "results.jsonl"
    whole = [json.dumps(record(f"s{i}", i)) for i in range(4)]
    # what two kills in a row left before: a fragment glued to the next record, then a torn tail
    path.write_text(whole[0] + "\n" + whole[1][:17] + whole[2] + "\n" + whole[3] + "\n" + whole[1][:9])
    with pytest.warns(UserWarning, match="dropping an incomplete"):
        records = read_records(path)
    assert sorted(records) == [("s0", "m"), ("s3", "m")]
    assert path.read_text() == whole[0] + "\n" + whole[3] + "\n"  # repaired on disk before anything is appended


def test_any_number_of_kills_mid_write_lose_no_finished_record(tmp_path):
    path = tmp_path / "results.jsonl"
    finished = []
    with pytest.warns(UserWarning, match="dropping an incomplete") as dropped:
        for kill in range(6):
            store = ResultsFile(path)  # opening repairs what the last kill tore
            for i in range(3):
                sample = f"k{kill}-{i}"
                store.update(sample, "m", lambda r, i=i: r["metrics"].__setitem__("psnr", i))
                finished.append(sample)
            with path.open("a") as f:  # the kill: half a line, no newline
                f.write(json.dumps(record("torn", kill))[: 5 + 7 * kill])
        records = read_records(path)
    torn = [w for w in dropped if "dropping an incomplete" in str(w.message)]
    assert len(torn) == 6  # each torn tail dropped once, when next opened
    assert sorted(s for s, _ in records) == sorted(finished)


def test_a_repair_drops_blank_lines_ends_the_last_line_and_leaves_a_sound_file_alone(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_bytes(b'{"x": 1}\n\n  \n{"x": 2}')  # blank lines, a complete last record without its newline
    assert JsonLines(path).read() == [{"x": 1}, {"x": 2}]
    assert path.read_bytes() == b'{"x": 1}\n{"x": 2}\n'
    inode = path.stat().st_ino
    store = JsonLines(path)
    assert store.read() == [{"x": 1}, {"x": 2}] and store.dropped == 0
    assert path.stat().st_ino == inode and not list(tmp_path.glob(".*.tmp"))  # sound: not rewritten


def test_the_store_appends_whole_lines_and_rewrites_atomically(tmp_path):
    store = JsonLines(tmp_path / "a.jsonl")
    assert store.read() == []
    store.append({"x": 1})
    store.append({"x": float("inf")})
    assert store.read() == [{"x": 1}, {"x": float("inf")}]
    store.rewrite([{"x": 2}])
    assert store.read() == [{"x": 2}] and not list(tmp_path.glob(".*.tmp"))


def test_remove_partial_writes_takes_only_a_killed_writers_temporary_files(tmp_path):
    nested = tmp_path / "outputs" / "identity"
    nested.mkdir(parents=True)
    leftovers = [nested / ".x.png.abc.tmp", tmp_path / ".results.jsonl.q9.tmp"]
    kept = [nested / "x.png", tmp_path / ".lock", tmp_path / "notes.tmp", nested / ".hidden"]
    for path in leftovers + kept:
        path.write_bytes(b"data")
    assert sorted(remove_partial_writes(tmp_path)) == sorted(leftovers)
    assert not any(path.exists() for path in leftovers) and all(path.exists() for path in kept)


def test_a_second_writer_is_refused_with_the_holders_pid(tmp_path):
    with FolderLock(tmp_path, job="benchmark run"):
        with pytest.raises(FolderLocked, match=rf"another benchmark run \(pid {os.getpid()}\)"):
            FolderLock(tmp_path, job="benchmark run").acquire()
    with FolderLock(tmp_path):  # released: the next writer gets it
        pass


def test_a_lock_left_by_a_killed_process_is_taken_over(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", f"from seminft_bench.fileio import FolderLock; import time; lock = FolderLock({str(tmp_path)!r}).acquire(); print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(FolderLocked, match=f"pid {holder.pid}"):
            FolderLock(tmp_path).acquire()
    finally:
        holder.kill()
        holder.wait()
    with FolderLock(tmp_path):  # the dead holder's lock file is still there, and is taken over
        assert (tmp_path / ".lock").read_text().strip() == str(os.getpid())


def test_leaving_with_os_exit_after_close_writes_leaves_no_half_written_file(tmp_path):
    # a worker thread writes large files back to back; the main thread leaves as the CLI does on Ctrl-C
    script = f"""
import os, threading, time
from seminft_bench.fileio import atomic_write_bytes, close_writes
data = os.urandom(1 << 24)
def work():
    for i in range(1000):
        atomic_write_bytes({str(tmp_path)!r} + f"/file{{i % 3}}.bin", data)
threading.Thread(target=work).start()
time.sleep(0.3)
assert close_writes(timeout=30)
os._exit(0)
"""
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
    assert not list(tmp_path.glob(".*.tmp"))
    assert all(path.stat().st_size == 1 << 24 for path in tmp_path.glob("file*.bin"))
