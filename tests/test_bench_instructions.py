"""`seminft-bench instructions`: JarvisArt's first step, a VLM's retouching instruction per sample, through the
judges' transport (planted server, no network): written once, resumed, failures recorded, keys never kept."""

import json
import threading

import numpy as np
import pytest
from typer.testing import CliRunner

from seminft_bench.cli.bench import app
from seminft_bench.imaging import to_array
from seminft_bench.vlm.testserver import Answer
from seminft_bench.vlm.writer import INSTRUCTION_PROMPT

KEY = "sk-instructions-test-0123456789"


class Plan:
    """An instruction naming the warmer of the two images sent (so their order shows); ``empty`` replies of
    white space first."""

    def __init__(self):
        self.empty, self.systems, self.lock = 0, set(), threading.Lock()

    def __call__(self, seen):
        with self.lock:
            self.systems.add(seen.system)
            if self.empty:
                self.empty -= 1
                return Answer("   ")
        source, reference = (to_array(image, np.float32).mean(axis=(0, 1)) for image in seen.images)
        warmer = "reference" if reference[0] - reference[2] > source[0] - source[2] else "source"
        return Answer(f'"Match the {warmer}\'s warmth."')


@pytest.fixture
def server(planted_vlm):
    return planted_vlm(Plan(), KEY, "qwen3-vl-32b")


def run(server, tmp_path):
    out = tmp_path / "instructions.jsonl"
    args = ["instructions", "--dataset", "demo", "--limit", "3", "--out", str(out), "--config", server.config,
            "--cache", str(tmp_path / "cache"), "--max-attempts", "1"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    return result, [json.loads(line) for line in out.read_text().splitlines()], out


def test_one_instruction_per_sample_resumed_and_never_the_key(server, tmp_path):
    result, records, out = run(server, tmp_path)
    assert result.exit_code == 0, result.output
    assert len({r["name"] for r in records}) == len(records) == 3
    assert all(r["instruction"] in ("Match the reference's warmth.", "Match the source's warmth.") for r in records)
    assert records[0]["settings"]["template"] == INSTRUCTION_PROMPT.version
    assert server.plan.systems == {INSTRUCTION_PROMPT.system} and server.calls == 3
    assert KEY not in out.read_text() and KEY not in result.output

    again, records_again, _ = run(server, tmp_path)
    assert again.exit_code == 0 and "0 written now, 3 before" in again.output
    assert server.calls == 3 and records_again == records  # nothing asked twice, nothing lost


def test_an_empty_reply_is_a_recorded_failure_and_a_rerun_retries_it(server, tmp_path):
    server.plan.empty = 1
    result, records, _ = run(server, tmp_path)
    assert result.exit_code == 1 and "1 failed" in result.output
    [failed] = [r for r in records if r["instruction"] is None]
    assert "no text" in failed["error"] and len(records) == 3
    result, records, _ = run(server, tmp_path)
    assert result.exit_code == 0 and "1 written now, 2 before" in result.output
    assert len(records) == 3 and all(r["instruction"] for r in records)
