"""Cold-start SFT on the tiny random FLUX: it learns, saves, loads, resumes exactly, runs in 2 processes, and
rejects bad inputs before training."""

import json
import os
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from seminft_bench.imaging import sample_photo
from seminft_bench.model.config import SFTConfig
from seminft_bench.model.pipeline import LoraMismatchError, SemiNFTPipeline
from seminft_bench.model.lora import LORA_FILE
from seminft_bench.model.sft import ADAPTER, train_sft
from seminft_bench.model.training import DatasetError, RunFolderError, write_manifest
from seminft_bench.pipelines.quadruplets import TASK_PROMPT

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")


def graded(photo: np.ndarray) -> np.ndarray:
    """A fixed warm, contrasty grade: the 'preset' the LoRA has to learn."""
    x = photo.astype(np.float32) / 255
    x = np.clip((x - 0.5) * 1.3 + 0.5, 0, 1) * np.array([1.0, 0.85, 0.6], np.float32)
    return (x * 255).round().astype(np.uint8)


def write_coldstart(
    folder: Path, size=(48, 32), reference_size=(32, 32), drop=(), target_size=None, swap_source: int | None = None
) -> Path:
    """A cold-start-format folder: ``data/train-00000-of-00001.parquet`` with embedded PNGs; ``swap_source`` flips
    that sample's source image (its id and everything else unchanged)."""
    rows = {"id": [], "source": [], "reference": [], "target": [], "prompt": []}
    for i, name in enumerate(PHOTOS):
        photo = sample_photo(name)
        source = np.asarray(Image.fromarray(photo).resize(size))
        target = Image.fromarray(graded(source))
        source = source[:, ::-1] if i == swap_source else source
        other = np.asarray(Image.fromarray(sample_photo(PHOTOS[(i + 1) % 4])).resize(reference_size))
        rows["id"].append(f"sample-{i}")
        rows["source"].append(Image.fromarray(np.ascontiguousarray(source)))
        rows["reference"].append(Image.fromarray(graded(other)))
        rows["target"].append(target.resize(target_size) if target_size and i == 2 else target)
        rows["prompt"].append(TASK_PROMPT)
    for column in drop:
        del rows[column]
    features = {key: datasets.Image() if key in ("source", "reference", "target") else datasets.Value("string") for key in rows}
    dataset = datasets.Dataset.from_dict(rows, features=datasets.Features(features))
    (folder / "data").mkdir(parents=True, exist_ok=True)
    dataset.to_parquet(folder / "data" / "train-00000-of-00001.parquet")
    return folder


@pytest.fixture(scope="module")
def coldstart(tmp_path_factory) -> Path:
    return write_coldstart(tmp_path_factory.mktemp("coldstart"))


def tiny_config(dataset: Path, out: Path, **overrides) -> SFTConfig:
    settings = dict(
        dataset=str(dataset), out=str(out), base="tiny:0", steps=6, learning_rate=1e-3, batch_size=2,
        lora_rank=4, lora_alpha=4, resolution=48, log_every=1, validate_every=1000, checkpoint_every=1000,
    )
    config = SFTConfig().override(**{**settings, **overrides})
    return replace(config, **{key: None for key, value in overrides.items() if value is None})  # override skips None


def losses(out: Path) -> list[float]:
    lines = (out / "logs" / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["loss"] for line in lines]


def test_loss_decreases_when_overfitting_four_samples(coldstart, tmp_path):
    config = tiny_config(coldstart, tmp_path / "run", steps=50, learning_rate=2e-2, lora_rank=8, lora_alpha=8, batch_size=4)
    out = train_sft(config, tiny=True,
                    cache_dir=tmp_path / "cache")
    curve = losses(out)
    assert len(curve) == 50
    assert np.mean(curve[-8:]) < 0.5 * np.mean(curve[:8])
    assert (out / LORA_FILE).is_file() and (out / "config.yaml").is_file()
    assert list((out / "logs").glob("validation-*.png"))


def load_with_diffusers(pipe: SemiNFTPipeline, folder: Path) -> None:
    from diffusers import FluxPipeline

    state, metadata = FluxPipeline.lora_state_dict(folder, return_lora_metadata=True)
    pipe.components.transformer.load_lora_adapter(state, prefix="transformer", adapter_name=ADAPTER, metadata=metadata)


def test_resumed_run_equals_uninterrupted_run(coldstart, tmp_path):
    cache = tmp_path / "cache"
    straight = train_sft(tiny_config(coldstart, tmp_path / "straight", steps=6), tiny=True, cache_dir=cache)
    resumed = tmp_path / "resumed"
    train_sft(tiny_config(coldstart, resumed, steps=3), tiny=True, cache_dir=cache)
    assert (resumed / "checkpoints" / "step-00000003").is_dir()
    train_sft(tiny_config(coldstart, resumed, steps=6), tiny=True, cache_dir=cache, resume="latest")
    expected, got = load_file(straight / LORA_FILE), load_file(resumed / LORA_FILE)
    assert expected.keys() == got.keys()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=1e-6)
    assert losses(resumed) == pytest.approx(losses(straight), abs=1e-6)


RANK_SCRIPT = """
import os
import sys
from safetensors.torch import save_file
from seminft_bench.model import sft
from seminft_bench.model.config import load_config

trained = []
add_lora = sft.add_coldstart_lora
sft.add_coldstart_lora = lambda flux, config: (trained.append(flux), add_lora(flux, config))[1]
out = sft.train_sft(load_config(sys.argv[1]), tiny=True, cache_dir=sys.argv[2])
from seminft_bench.model.lora import lora_state
state = {name: tensor.contiguous() for name, tensor in lora_state(trained[0], sft.ADAPTER).items()}
save_file(state, str(out / f"rank{os.environ['RANK']}.safetensors"))
"""


def test_two_cpu_processes_end_with_the_same_lora_and_it_loads(coldstart, tmp_path):
    from seminft_bench.model.config import save_config

    out = tmp_path / "ddp"
    config_file = save_config(tiny_config(coldstart, out, steps=3, batch_size=1), tmp_path / "sft.yaml")
    script = tmp_path / "rank.py"
    script.write_text(RANK_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    with socket.socket() as probe:  # a free port for the rendezvous
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", port,
               str(script), str(config_file), str(tmp_path / "cache")]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    rank0, rank1 = load_file(out / "rank0.safetensors"), load_file(out / "rank1.safetensors")
    assert rank0.keys() == rank1.keys() and all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    saved = {key.removeprefix("transformer."): value for key, value in load_file(out / LORA_FILE).items()}
    assert all(torch.equal(saved[k], rank0[k]) for k in rank0)
    assert any(not torch.equal(v, torch.zeros_like(v)) for k, v in rank0.items() if "lora_B" in k)
    load_with_diffusers(SemiNFTPipeline.tiny(0), out)


@pytest.mark.parametrize(
    "kind, message",
    [("missing column", "lacks the column(s) target"), ("size mismatch", "target is 40×40 but source is 48×32")],
)
def test_bad_dataset_fails_before_training(tmp_path, kind, message):
    folder = tmp_path / "bad"
    if kind == "missing column":
        write_coldstart(folder, drop=("target",))
    else:
        write_coldstart(folder, target_size=(40, 40))
    with pytest.raises(DatasetError, match=message.replace("(", r"\(").replace(")", r"\)")):
        train_sft(tiny_config(folder, tmp_path / "run"), tiny=True, cache_dir=tmp_path / "cache")
    assert not (tmp_path / "run").exists() and not (tmp_path / "cache").exists()


def test_resuming_from_a_lora_of_another_model_fails_before_training(coldstart, tmp_path):
    from seminft_bench.model.components import tiny_components
    from seminft_bench.model.lora import save_lora
    from seminft_bench.model.sft import add_coldstart_lora

    checkpoint = tmp_path / "other" / "checkpoints" / "step-00000001"
    flux = tiny_components(0).transformer
    add_coldstart_lora(flux, tiny_config(coldstart, tmp_path / "other", lora_rank=2, lora_alpha=2))
    save_lora(flux, checkpoint, ADAPTER, SemiNFTPipeline.tiny(0).record("all", "sft", 1))
    write_manifest(checkpoint, "another run")
    run = tmp_path / "run"
    with pytest.raises(LoraMismatchError, match=r"not a LoRA of this run.*\(2, 32\) in the file, \(4, 32\) here"):
        train_sft(tiny_config(coldstart, run), tiny=True, cache_dir=tmp_path / "cache", fork=str(checkpoint))
    with pytest.raises(RunFolderError, match="a checkpoint of a run with other settings: --fork"):
        train_sft(tiny_config(coldstart, run), tiny=True, cache_dir=tmp_path / "cache", resume=str(checkpoint))
    with pytest.raises(RunFolderError, match="not a checkpoint to start from: no manifest.json"):
        train_sft(tiny_config(coldstart, run), tiny=True, cache_dir=tmp_path / "cache", resume=str(tmp_path))
    assert not (run / "checkpoints").exists() and not (run / "logs").exists() and not (tmp_path / "cache").exists()


def test_gpu_only_options_fail_clearly_on_cpu(coldstart, tmp_path):
    with pytest.raises(ValueError, match="adamw8bit runs on CUDA GPUs only"):
        train_sft(tiny_config(coldstart, tmp_path / "run", optimizer="adamw8bit"), tiny=True)
    with pytest.raises(ValueError, match="quantize_base: nf4 runs on CUDA GPUs only"):
        train_sft(tiny_config(coldstart, tmp_path / "run", quantize_base="nf4"), tiny=True)


def test_lora_on_main_trains_the_lora(coldstart, tmp_path):
    out = train_sft(tiny_config(coldstart, tmp_path / "run", steps=2, lora_on="main"), tiny=True,
                    cache_dir=tmp_path / "cache")
    assert any(not torch.equal(v, torch.zeros_like(v)) for k, v in load_file(out / LORA_FILE).items() if "lora_B" in k)


def test_cli_trains_the_tiny_model_with_flags_over_a_config(coldstart, tmp_path):
    from typer.testing import CliRunner

    from seminft_bench.cli.train import app
    from seminft_bench.model.config import load_config, save_config

    config = save_config(tiny_config(coldstart, tmp_path / "ignored", steps=50), tmp_path / "sft.yaml")
    out = tmp_path / "run"
    args = ["sft", "--config", str(config), "--tiny", "--out", str(out), "--max-steps", "2", "--cache", str(tmp_path / "c")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert (out / LORA_FILE).is_file() and load_config(out / "config.yaml").steps == 2
    bad = CliRunner().invoke(app, ["sft", "--tiny", "--dataset", str(tmp_path / "nowhere"), "--out", str(out)])
    assert bad.exit_code == 2 and "nowhere: no such dataset folder" in bad.output and "hf download" not in bad.output
