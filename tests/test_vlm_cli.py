"""``seminft-bench judge`` end to end against a local planted server: pairing, results, resume, costs, secrets."""

import json

import numpy as np
import pytest
import skimage.data
from typer.testing import CliRunner

from seminft_bench.cli import bench
from seminft_bench.imaging import write_png
from seminft_bench.vlm.testserver import Answer, Fault, PlantedServer

KEY = "sk-test-cli-0123456789abcdef"
NAMES = ["alpha", "bravo", "charlie", "delta", "echo"]
SCORES = dict(zip(NAMES, [0, 1, 3, 4, 5]))


@pytest.fixture
def folders(tmp_path):
    """references/ and predictions/ with five matching stems plus one stray file on each side."""
    refs, preds = tmp_path / "references", tmp_path / "predictions"
    photo = skimage.data.chelsea()
    for i, name in enumerate(NAMES):
        write_png(photo[20 * i : 20 * i + 40, :50], refs / f"{name}.png")
        write_png(np.full((30, 30, 3), (40 * i + 20, 10, 10), np.uint8), preds / f"{name}.png")
    write_png(photo[:20, :20], refs / "only-reference.png")
    write_png(photo[:20, :20], preds / "only-prediction.png")
    (preds / "notes.txt").write_text("not an image")
    return refs, preds


def name_of(seen) -> str:
    return NAMES[round((seen.images[1].getpixel((0, 0))[0] - 20) / 40)]


class Service:
    """The planted provider: "delta" fails with 500 and "echo" with a key-echoing 400 until healed."""

    def __init__(self):
        self.healed = False

    def __call__(self, seen):
        name = name_of(seen)
        if not self.healed and name == "delta":
            return Fault(500, "internal error")
        if not self.healed and name == "echo":
            return Fault(400, f"bad request from {KEY}")
        if seen.reward:
            return Answer(str(SCORES[name]), logprobs={str(SCORES[name]): 0.0}, output_tokens=1)
        return Answer(json.dumps({"score": SCORES[name], "reasoning": f"about {name}"}))


def run_cli(server, folders, out, cache, *extra):
    refs, preds = folders
    args = ["judge", "--judge", "gpt-4o", "--references", str(refs), "--predictions", str(preds), "--out", str(out),
            "--cache", str(cache), "--base-url", server.openai_url, "--concurrency", "3", "--timeout", "2",
            "--max-attempts", "2", "--backoff", "0.01", *extra]  # fmt: skip
    return CliRunner().invoke(bench.app, args)


def lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_judge_command_scores_resumes_and_keeps_keys_out(tmp_path, folders, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    out, cache = tmp_path / "scores.jsonl", tmp_path / "cache"
    service = Service()
    outputs = []
    with PlantedServer(service, api_key=KEY) as server:
        first = run_cli(server, folders, out, cache)
        outputs.append(first.output)
        assert first.exit_code == 1, first.output  # failures make the exit status non-zero
        assert "5 pairs: 3 scored now, 0 scored before, 2 failed" in first.output
        assert "only-prediction" in first.output and "only-reference" in first.output
        records = {r["name"]: r for r in lines(out)}
        assert sorted(records) == NAMES
        for name in ["alpha", "bravo", "charlie"]:
            record = records[name]
            assert {"name", "judge", "score", "reasoning", "error", "usage"} <= record.keys()
            assert (record["judge"], record["score"], record["error"]) == ("gpt-4o", SCORES[name], None)
            assert record["reasoning"] == f"about {name}" and record["usage"]["input_tokens"] == 100
        assert records["delta"]["score"] is None and "HTTP 500" in records["delta"]["error"]
        assert records["echo"]["score"] is None and "[REDACTED]" in records["echo"]["error"]
        assert server.calls == 3 + 2 + 1  # three answers, delta tried twice, echo once

        # A killed run can leave half a line; the next run drops it and goes on.
        with open(out, "a") as f:
            f.write('{"name": "delta", "judge": "gpt-')
        service.healed = True
        server.reset_counts()
        second = run_cli(server, folders, out, cache)
        outputs.append(second.output)
        assert second.exit_code == 0, second.output
        assert "5 pairs: 2 scored now, 3 scored before, 0 failed" in second.output
        assert server.calls == 2  # only the two failures are asked again
        assert {r["name"]: r["score"] for r in lines(out)} == SCORES and len(lines(out)) == 5

        server.reset_counts()
        third = run_cli(server, folders, out, cache)
        outputs.append(third.output)
        assert third.exit_code == 0 and server.calls == 0
        assert "0 scored now, 5 scored before" in third.output

        # Reward scores go into the same file as their own lines.
        fourth = run_cli(server, folders, out, cache, "--reward")
        outputs.append(fourth.output)
        assert fourth.exit_code == 0, fourth.output
        rewards = {r["name"]: r["score"] for r in lines(out) if r["mode"] == "reward"}
        assert rewards == SCORES and len(lines(out)) == 10

    costs = json.loads((tmp_path / "scores.costs.json").read_text())["judges"]["gpt-4o"]
    assert costs["calls"] == 3 + 2 + 5  # every answered request, across runs, once
    assert costs["input_tokens"] == 100 * costs["calls"]
    assert costs["cost_usd"] == pytest.approx(costs["input_tokens"] * 2.5e-6 + costs["output_tokens"] * 10e-6)
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path
    assert all(KEY not in text for text in outputs)


def test_judge_command_reports_a_missing_key(tmp_path, folders, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    refs, preds = folders
    args = ["judge", "--judge", "gpt-4o", "--references", str(refs), "--predictions", str(preds),
            "--out", str(tmp_path / "o.jsonl"), "--cache", str(tmp_path / "c")]  # fmt: skip
    result = CliRunner().invoke(bench.app, args)
    assert result.exit_code != 0 and "OPENAI_API_KEY" in result.output
