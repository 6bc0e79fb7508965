"""`seminft-bench run` under real signals: repeated SIGKILLs lose nothing and double nothing; Ctrl-C stops
within seconds and the next run resumes. Each run is a real CLI process."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings

import numpy as np
import pytest

from seminft_bench.bench.results import read_records
from seminft_bench.imaging import to_array
from seminft_bench.vlm.testserver import Answer, PlantedServer

KEY = "sk-kill-test-0123456789"
DRIVER = textwrap.dedent(
    """
    import sys, time
    from seminft_bench.bench.methods import REGISTRY, Method

    class Slow(Method):
        name = "slow"

        def transfer(self, source, reference):
            time.sleep(0.25)
            return source.convert("L").convert("RGB")

    if __name__ == "__main__":
        REGISTRY["slow"] = "driver:Slow"
        from seminft_bench.cli.bench import app

        app(sys.argv[1:], prog_name="seminft-bench")
    """
)


def plan(seen):
    score = int(to_array(seen.images[1]).mean()) % 6  # deterministic per output image
    return Answer(str(score), logprobs={str(score): 0.0}) if seen.reward else Answer(json.dumps({"score": score, "reasoning": "r"}))


@pytest.fixture
def cli(tmp_path):
    (tmp_path / "driver.py").write_text(DRIVER)
    with PlantedServer(plan, latency=0.02) as server:
        config = tmp_path / "judges.toml"
        config.write_text(f'[judges.gpt-4o]\nbase_url = "{server.openai_url}"\n[judges."qwen3-vl-8b"]\nbase_url = "{server.openai_url}"\n')
        env = {**os.environ, "OPENAI_API_KEY": KEY, "PYTHONPATH": str(tmp_path)}

        def start(out, *extra):
            args = ["run", "--dataset", "demo", "--limit", "4", "--method", "identity,slow,reinhard,histogram",
                    "--metrics", "psnr,ssim,color,structure", "--judges", "gpt-4o", "--reward", "qwen3-vl-8b",
                    "--config", str(config), "--cache", str(tmp_path / f"cache-{out.name}"), "--out", str(out), *extra]  # fmt: skip
            return subprocess.Popen([sys.executable, str(tmp_path / "driver.py"), *args], cwd=tmp_path, env=env,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip

        yield start


def lines_in(path):
    return len(path.read_bytes().split(b"\n")) - 1 if path.exists() else 0


def quietly_read(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return read_records(path)


@pytest.mark.timeout(400)
def test_repeated_kills_then_a_clean_finish_equal_an_uninterrupted_run(tmp_path, cli):
    reference = cli(tmp_path / "uninterrupted")
    assert reference.wait(timeout=200) == 0, reference.stdout.read()
    expected = read_records(tmp_path / "uninterrupted" / "results.jsonl")

    out, rng, kills = tmp_path / "killed", np.random.default_rng(0), 0
    results = out / "results.jsonl"
    for _ in range(6):
        process = cli(out)
        before, deadline = lines_in(results), time.monotonic() + 120
        grown = before + int(rng.integers(1, 6))
        while process.poll() is None and lines_in(results) < grown and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(float(rng.uniform(0, 0.1)))
        if process.poll() is None:
            process.kill()
            kills += 1
        process.wait()
        quietly_read(results)  # readable after every kill
    assert kills >= 5
    finish = cli(out)
    assert finish.wait(timeout=200) == 0, finish.stdout.read()
    got = read_records(results)
    assert got == expected  # every cell once, each equal to the uninterrupted run's
    assert len(results.read_text().splitlines()) == len(expected)  # compacted: one line per cell


@pytest.mark.timeout(300)
def test_ctrl_c_stops_within_seconds_and_the_next_run_resumes(tmp_path, cli):
    out = tmp_path / "interrupted"
    process = cli(out)
    deadline = time.monotonic() + 120
    while not (out / "outputs" / "slow").is_dir() or not any((out / "outputs" / "slow").iterdir()):
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    process.send_signal(signal.SIGINT)
    sent = time.monotonic()
    code = process.wait(timeout=30)
    assert time.monotonic() - sent < 5 and code == 130
    assert "rerun the same command to resume" in process.stdout.read()
    assert not list(out.rglob(".*.tmp"))  # nothing half-written
    partial = read_records(out / "results.jsonl")
    assert 0 < len(partial) < 16

    finish = cli(out)
    assert finish.wait(timeout=200) == 0, finish.stdout.read()
    records = read_records(out / "results.jsonl")
    assert len(records) == 16 and not any(r["errors"] for r in records.values())
