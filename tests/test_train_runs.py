"""Training run folders: one writer, one identity, checkpoints checked before a resume, logs without replays,
every bad value refused before any work, and real SIGKILLs that still end bit-equal to an uninterrupted run."""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from test_model_nft_loop import config as nft_config
from test_model_nft_loop import inputs  # noqa: F401 (a fixture)
from test_model_sft import tiny_config, write_coldstart
from typer.testing import CliRunner

from seminft_bench.cli.train import app
from seminft_bench.fileio import FolderLock, FolderLocked
from seminft_bench.model.config import load_config, save_config
from seminft_bench.model.lora import LORA_FILE
from seminft_bench.model.nft import train_nft
from seminft_bench.model.sft import train_sft
from seminft_bench.model.training import RunFolderError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def coldstart(tmp_path_factory) -> Path:
    return write_coldstart(tmp_path_factory.mktemp("coldstart"))


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def straight(coldstart, cache, tmp_path_factory) -> Path:
    """4 uninterrupted SFT steps, a checkpoint every 2: what every interrupted run must end equal to."""
    out = tmp_path_factory.mktemp("straight") / "run"
    return train_sft(tiny_config(coldstart, out, steps=4, checkpoint_every=2), tiny=True, cache_dir=cache)


def same_lora(a: Path, b: Path) -> bool:
    left, right = load_file(a / LORA_FILE), load_file(b / LORA_FILE)
    return left.keys() == right.keys() and all(torch.equal(left[k], right[k]) for k in left)


def logged_steps(out: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (out / "logs" / "metrics.jsonl").read_text().splitlines()]


def tensorboard_steps(out: Path, tag: str = "train/loss") -> list[int]:
    """The steps TensorBoard shows for ``tag``, after it applies the purges a resume asked for."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(os.fspath(out / "logs"), purge_orphaned_data=True)
    events.Reload()
    return [event.step for event in events.Scalars(tag)]


def copy_run(run: Path, to: Path) -> Path:
    shutil.copytree(run, to, ignore=shutil.ignore_patterns(".lock"))
    return to


# --------------------------------------------------------------------------- one writer


def test_a_second_writer_is_refused_before_it_touches_anything(coldstart, cache, straight, tmp_path):
    run = copy_run(straight, tmp_path / "run")
    before = {path: path.read_bytes() for path in run.rglob("*") if path.is_file()}
    with FolderLock(run, job="test"):  # a live writer: the kernel lock, as another process holds it
        with pytest.raises(FolderLocked, match=f"pid {os.getpid()}"):
            train_sft(tiny_config(coldstart, run, steps=6, seed=1), tiny=True, cache_dir=cache, resume="latest")
        result = CliRunner().invoke(app, ["sft", "--tiny", "--dataset", str(coldstart), "--out", str(run), "--resume", "latest"])
        assert result.exit_code == 2 and result.output.count("\n") == 1 and "being written by another" in result.output
    after = {path: path.read_bytes() for path in run.rglob("*") if path.is_file() and path.name != ".lock"}
    assert after == {path: data for path, data in before.items() if path.name != ".lock"}


def test_a_lock_left_by_a_killed_run_and_its_half_writes_are_cleared(coldstart, cache, straight, tmp_path):
    run = copy_run(straight, tmp_path / "run")
    (run / ".lock").write_text("999999\n")  # a dead writer's pid, no kernel lock
    (run / "checkpoints" / "step-00000006.partial").mkdir()
    (run / "logs" / ".metrics.jsonl.abc123.tmp").write_text("half")
    train_sft(tiny_config(coldstart, run, steps=5, checkpoint_every=2), tiny=True, cache_dir=cache, resume="latest")
    assert not list(run.rglob("*.partial")) and not list(run.rglob(".*.tmp"))
    assert logged_steps(run) == [1, 2, 3, 4, 5]


# --------------------------------------------------------------------------- one identity


def test_a_resume_under_other_settings_is_refused_naming_them_and_a_fork_continues(coldstart, cache, straight, tmp_path):
    run = copy_run(straight, tmp_path / "run")
    config_before = (run / "config.yaml").read_text()
    changed = tiny_config(coldstart, run, steps=10, seed=7, learning_rate=0.01)
    with pytest.raises(RunFolderError) as refused:
        train_sft(changed, tiny=True, cache_dir=cache, resume="latest")
    message = str(refused.value)
    assert "seed: 0 there, 7 now" in message and "learning_rate: 0.001 there, 0.01 now" in message
    assert "--fork" in message and "steps" not in message.replace("checkpoints", "")
    assert (run / "config.yaml").read_text() == config_before

    with pytest.raises(RunFolderError, match=r"continue it with --resume latest"):  # no --resume: not a new run here
        train_sft(tiny_config(coldstart, run, steps=4, checkpoint_every=2), tiny=True, cache_dir=cache)

    other_data = write_coldstart(tmp_path / "other", swap_source=1)
    with pytest.raises(RunFolderError, match=r"dataset \(its content\)"):
        train_sft(tiny_config(other_data, run, steps=4, checkpoint_every=2), tiny=True, cache_dir=cache, resume="latest")

    # Only the step budget and the intervals may change; config.yaml then says so.
    train_sft(tiny_config(coldstart, run, steps=5, log_every=2, checkpoint_every=5), tiny=True, cache_dir=cache,
              resume="latest")  # fmt: skip
    saved = load_config(run / "config.yaml")
    assert (saved.steps, saved.log_every, saved.seed, saved.learning_rate) == (5, 2, 0, 1e-3)

    # A fork continues a checkpoint in a new folder under its own settings, the new learning rate included.
    fork = tmp_path / "fork"
    train_sft(tiny_config(coldstart, fork, steps=3, learning_rate=0.01), tiny=True, cache_dir=cache,
              fork=str(straight / "checkpoints" / "step-00000002"))  # fmt: skip
    optimizer = torch.load(fork / "checkpoints" / "step-00000003" / "optimizer.bin", weights_only=False)
    assert optimizer["param_groups"][0]["lr"] == 0.01
    assert logged_steps(fork) == [3]
    recorded = json.loads((fork / "run.json").read_text())["identity"]
    assert recorded["forked_from"] == str((straight / "checkpoints" / "step-00000002").resolve())
    with pytest.raises(RunFolderError, match="give it a new --out"):
        train_sft(tiny_config(coldstart, fork, steps=3), tiny=True, cache_dir=cache, fork=str(straight / "checkpoints" / "step-00000002"))


# --------------------------------------------------------------------------- checkpoints


@pytest.mark.parametrize("damaged", [LORA_FILE, "optimizer.bin", "custom_checkpoint_0.pkl", "manifest.json"])
def test_a_damaged_latest_checkpoint_is_skipped_with_a_warning_naming_it(coldstart, cache, straight, tmp_path, damaged, capsys):
    run = copy_run(straight, tmp_path / "run")
    (run / LORA_FILE).unlink()  # as if killed before the end
    latest = run / "checkpoints" / "step-00000004"
    with open(latest / damaged, "r+b") as f:
        f.truncate(max(1, os.path.getsize(latest / damaged) // 2))
    train_sft(tiny_config(coldstart, run, steps=4, checkpoint_every=2), tiny=True, cache_dir=cache, resume="latest")
    warning = capsys.readouterr().err
    assert f"skipping the checkpoint {latest}" in warning and (damaged in warning or "manifest" in warning)
    assert same_lora(run, straight) and logged_steps(run) == [1, 2, 3, 4]


def test_no_valid_checkpoint_is_one_clear_error(coldstart, cache, straight, tmp_path):
    run = copy_run(straight, tmp_path / "run")
    for checkpoint in (run / "checkpoints").iterdir():
        (checkpoint / "optimizer.bin").write_bytes(b"")
    with pytest.raises(RunFolderError, match=r"holds no valid checkpoint \(step-00000004: optimizer.bin has 0 bytes"):
        train_sft(tiny_config(coldstart, run, steps=4, checkpoint_every=2), tiny=True, cache_dir=cache, resume="latest")


def test_a_damaged_nft_old_policy_falls_back_to_the_checkpoint_before(inputs, tmp_path, capsys):  # noqa: F811
    cache = tmp_path / "cache"
    straight = train_nft(nft_config(inputs, tmp_path / "straight", steps=2, checkpoint_every=1), tiny=True, cache_dir=cache)
    run = copy_run(straight, tmp_path / "run")
    (run / LORA_FILE).unlink()
    old = run / "checkpoints" / "step-00000002" / "old" / LORA_FILE
    old.write_bytes(old.read_bytes()[:100])
    train_nft(nft_config(inputs, run, steps=2, checkpoint_every=1), tiny=True, cache_dir=cache, resume="latest")
    assert "step-00000002: old/pytorch_lora_weights.safetensors has 100 bytes" in capsys.readouterr().err
    assert same_lora(run, straight) and logged_steps(run) == logged_steps(straight)


# --------------------------------------------------------------------------- records


def test_replayed_steps_are_logged_once_and_each_grid_precedes_its_checkpoint(coldstart, cache, straight, tmp_path, monkeypatch):
    run = copy_run(straight, tmp_path / "run")
    shutil.rmtree(run / "checkpoints" / "step-00000004")  # killed after logging step 4, before its checkpoint
    train_sft(tiny_config(coldstart, run, steps=6, checkpoint_every=2), tiny=True, cache_dir=cache, resume="latest")
    assert logged_steps(run) == [1, 2, 3, 4, 5, 6]
    assert tensorboard_steps(run) == [1, 2, 3, 4, 5, 6]

    from seminft_bench.model import training

    grids_at_checkpoint = []

    def save_checkpoint(accelerator, out, step, config, run):
        grids_at_checkpoint.append((out / "logs" / f"validation-{step:08d}.png").is_file())
        raise KeyboardInterrupt  # killed during the first checkpoint

    monkeypatch.setattr(training, "save_checkpoint", save_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        train_sft(tiny_config(coldstart, tmp_path / "grid", steps=4, validate_every=2, checkpoint_every=2), tiny=True,
                  cache_dir=cache)  # fmt: skip
    assert grids_at_checkpoint == [True]


# --------------------------------------------------------------------------- config values


BAD_VALUES = [
    ("checkpoint_every", 0, "--checkpoint-every", "must be ≥ 1, got 0"),
    ("log_every", 0, "--log-every", "must be ≥ 1, got 0"),
    ("validate_every", 0, "--validate-every", "must be ≥ 1, got 0"),
    ("steps", -3, "--max-steps", "must be ≥ 0, got -3"),
    ("batch_size", 0, "--batch-size", "must be ≥ 1, got 0"),
    ("learning_rate", -1, "--learning-rate", "must be > 0, got -1"),
]


@pytest.mark.parametrize(("key", "value", "flag", "rule"), BAD_VALUES)
def test_a_bad_value_in_the_file_or_a_flag_fails_before_any_work_naming_it(coldstart, tmp_path, key, value, flag, rule):
    out = tmp_path / "run"
    file = save_config(tiny_config(coldstart, out), tmp_path / "sft.yaml")
    file.write_text(yaml.safe_dump({**yaml.safe_load(file.read_text()), key: value}))
    from_file = CliRunner().invoke(app, ["sft", "--tiny", "--config", str(file)])
    assert from_file.exit_code == 2 and from_file.output == f"error: {file}: {key} {rule}\n"
    from_flag = CliRunner().invoke(app, ["sft", "--tiny", "--dataset", str(coldstart), "--out", str(out), flag, str(value)])
    assert from_flag.exit_code == 2 and from_flag.output.startswith(f"error: command line: {flag} {rule}")  # -1 or -1.0
    assert from_flag.output.count("\n") == 1
    assert not out.exists()

    if key in ("checkpoint_every", "log_every", "validate_every", "steps", "learning_rate"):  # NFT has them too
        nft_file = tmp_path / "nft.yaml"
        nft_file.write_text(f"dataset: {coldstart}\nout: {out}\ninit: base\n{key}: {value}\n")
        nft = CliRunner().invoke(app, ["nft", "--tiny", "--config", str(nft_file)])
        assert nft.exit_code == 2 and nft.output == f"error: {nft_file}: {key} {rule}\n"
        assert not out.exists()


# --------------------------------------------------------------------------- real kills


KILLER = """
import os, signal, sys
from seminft_bench.model import training
from seminft_bench.cli.train import app

def die():
    os.kill(os.getpid(), signal.SIGKILL)

where, original = os.environ.get("KILL_IN"), training.write_manifest
def write_manifest(folder, run):
    if where == "save":  # the checkpoint's files are written, its manifest not yet
        die()
    original(folder, run)
    if where == "rename":  # the manifest is written, the folder not renamed yet
        die()
training.write_manifest = write_manifest
sys.argv = ["seminft-train", *sys.argv[1:]]
app()
"""


def test_sigkills_at_random_moments_and_mid_checkpoint_end_bit_equal_with_each_step_logged_once(coldstart, cache, tmp_path):
    steps, every = 16, 2
    straight = train_sft(tiny_config(coldstart, tmp_path / "straight", steps=steps, checkpoint_every=every, validate_every=4),
                         tiny=True, cache_dir=cache)  # fmt: skip
    run = tmp_path / "run"
    command = [sys.executable, "-c", KILLER, "sft", "--tiny", "--config",
               str(save_config(tiny_config(coldstart, run, steps=steps, checkpoint_every=every, validate_every=4),
                               tmp_path / "sft.yaml")),
               "--cache", str(cache), "--resume", "latest"]  # fmt: skip
    rng = random.Random(0)
    kills = ["save", "random", "rename", "random", "save", "random"]
    killed = 0
    for kill in kills:
        env = {**os.environ, "KILL_IN": kill}
        process = subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if kill == "random":  # once it has logged a step, at a random moment
            metrics, start = run / "logs" / "metrics.jsonl", len(logged_steps(run)) if (run / "logs" / "metrics.jsonl").exists() else 0
            while process.poll() is None and (not metrics.exists() or len(metrics.read_text().splitlines()) <= start):
                time.sleep(0.05)
            time.sleep(rng.uniform(0, 0.25))
            process.send_signal(signal.SIGKILL)
        _, err = process.communicate(timeout=300)
        assert process.returncode in (-signal.SIGKILL, 0), err.decode()[-2000:]
        killed += process.returncode == -signal.SIGKILL
        if process.returncode == 0:
            break
    assert killed >= 5
    final = subprocess.run(command, env={**os.environ, "KILL_IN": ""}, cwd=ROOT, capture_output=True, timeout=300)
    assert final.returncode == 0, final.stderr.decode()[-2000:]
    assert same_lora(run, straight)
    assert logged_steps(run) == list(range(1, steps + 1))
    assert tensorboard_steps(run) == list(range(1, steps + 1))
    assert not list(run.rglob("*.partial")) and not list(run.rglob(".*.tmp"))
