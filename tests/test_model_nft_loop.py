"""`seminft-train nft --tiny`: the whole DiffusionNFT loop on CPU, on an RL-pairs folder with offline anchors."""

import json
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from seminft_bench.imaging import sample_photo
from seminft_bench.model.config import NFTConfig, SFTConfig
from seminft_bench.model.lora import LORA_FILE, lora_state, save_lora
from seminft_bench.model.nft import train_nft
from seminft_bench.model.pipeline import SemiNFTPipeline
from seminft_bench.model.sft import ADAPTER, add_coldstart_lora
from seminft_bench.pipelines.quadruplets import TASK_PROMPT

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")


def write_pairs(folder: Path, with_targets: bool = False) -> Path:
    """An RL-pairs folder (the `build-rl` columns training reads: id, source, reference), or with
    ``with_targets`` a cold-start-like one (a target column too)."""
    rows = {"id": [], "prompt": [], "source": [], "reference": [], **({"target": []} if with_targets else {})}
    for i, name in enumerate(PHOTOS):
        rows["id"].append(f"pair-{i}")
        rows["prompt"].append(TASK_PROMPT)
        rows["source"].append(Image.fromarray(sample_photo(name)).resize((48, 32)))
        rows["reference"].append(Image.fromarray(sample_photo(PHOTOS[(i + 1) % 4])).resize((32, 32)))
        if with_targets:
            rows["target"].append(rows["source"][-1].convert("L").convert("RGB"))
    features = datasets.Features({key: datasets.Value("string") if key in ("id", "prompt") else datasets.Image() for key in rows})
    (folder / "data").mkdir(parents=True, exist_ok=True)
    datasets.Dataset.from_dict(rows, features=features).to_parquet(folder / "data" / "train-00000-of-00001.parquet")
    return folder


def write_coldstart_lora(folder: Path, **settings) -> Path:
    """A cold-start LoRA with non-zero weights (so freezing it is visible) for the tiny:0 transformer, recorded as
    trained at 48² with the unified prompt (or other pipeline ``settings``)."""
    pipe = SemiNFTPipeline.tiny(0, pixel_area=48 * 48)
    for name, value in settings.items():
        setattr(pipe, name, value)
    flux = pipe.components.transformer
    add_coldstart_lora(flux, SFTConfig(lora_rank=4, lora_alpha=8))
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, parameter in flux.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)
    save_lora(flux, folder, ADAPTER, pipe.record("all", "sft", 1))
    return folder


def write_offline(folder: Path, pairs: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    records = []
    for i, name in enumerate(PHOTOS[:3]):
        Image.fromarray(sample_photo(name)).resize((48, 32)).save(folder / f"{name}.png")
        Image.fromarray(sample_photo(PHOTOS[i + 1])).resize((32, 32)).save(folder / f"ref-{name}.png")
        records.append({"id": f"o{i}", "source": f"{name}.png", "reference": f"ref-{name}.png", "image": f"{name}.png",
                        "score": float(i + 1), "note": "test rule"})  # fmt: skip
    path = folder / "offline.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("nft")
    pairs = write_pairs(root / "pairs")
    return pairs, write_coldstart_lora(root / "coldstart"), write_offline(root / "offline", pairs)


def config(inputs, out, **overrides) -> NFTConfig:
    pairs, coldstart, offline = inputs
    settings = dict(
        dataset=str(pairs), coldstart_lora=str(coldstart), offline_samples=str(offline), out=str(out), base="tiny:0",
        steps=3, groups_per_step=1, group_online=3, group_offline=2, rollout_steps=2, reward="color-stats", lora_rank=4,
        lora_alpha=4, resolution=48, learning_rate=1e-2, validate_every=1000, checkpoint_every=1000,
    )
    return NFTConfig().override(**{**settings, **overrides})


def test_tiny_nft_trains_rl_leaves_coldstart_bit_identical_and_loads_in_the_pipeline(inputs, tmp_path, monkeypatch):
    from seminft_bench.model import nft

    trained = []
    original = nft.save_lora
    monkeypatch.setattr(nft, "save_lora", lambda flux, *a, **k: (trained.append(flux), original(flux, *a, **k))[1])
    out = train_nft(config(inputs, tmp_path / "run"), tiny=True, cache_dir=tmp_path / "cache")
    rl = load_file(out / LORA_FILE)
    assert any("lora_B" in key and bool(tensor.abs().sum() > 0) for key, tensor in rl.items())  # rl moved from its zero init
    # peft marks adapters trainable when activated: the frozen cold-start LoRA must not have moved at all
    after = lora_state(trained[-1], ADAPTER)
    before = {k.removeprefix("transformer."): v for k, v in load_file(inputs[1] / LORA_FILE).items()}
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)

    lines = [json.loads(line) for line in (out / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines if "reward/validation" in line] == [0, 3]  # the curve's start and end
    lines = [line for line in lines if "loss" in line]
    assert len(lines) == 3 and all(np.isfinite(line["loss"]) for line in lines)
    assert all(0 <= line["reward/online_raw"] <= 5 and line["reward/offline_raw"] > 0 for line in lines)
    assert all(line["reward/failed"] == 0 for line in lines)
    pipe = SemiNFTPipeline.from_pretrained("tiny:0", lora=[inputs[1], out])
    assert pipe.lora_hashes().keys() == {"coldstart", "rl"}
    source, reference = sample_photo("astronaut"), sample_photo("coffee")
    with_rl = pipe.denoise(source, reference, num_inference_steps=2, generator=torch.Generator().manual_seed(0))
    only_coldstart = SemiNFTPipeline.from_pretrained("tiny:0", lora=[inputs[1]]).denoise(
        source, reference, num_inference_steps=2, generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert not torch.allclose(with_rl, only_coldstart)  # the rl LoRA changes what the pipeline makes


def test_nft_raises_the_colour_reward_on_a_fixed_pair(tmp_path):
    """The RL stage's promise on the tiny model: the policy learns what the reward prefers. One pair, the
    weight-free colour reward, no anchors; the validation curve is the rl policy's mean reward on the pair
    from fixed noise, so before and after are compared on the same noise."""
    rows = {"id": ["pair-0"], "source": [Image.fromarray(sample_photo("astronaut")).resize((32, 32))],
            "reference": [Image.fromarray(sample_photo("coffee")).resize((32, 32))]}  # fmt: skip
    features = datasets.Features({"id": datasets.Value("string"), "source": datasets.Image(), "reference": datasets.Image()})
    (tmp_path / "pair" / "data").mkdir(parents=True)
    datasets.Dataset.from_dict(rows, features=features).to_parquet(tmp_path / "pair" / "data" / "train-00000-of-00001.parquet")
    settings = NFTConfig().override(
        dataset=str(tmp_path / "pair"), out=str(tmp_path / "run"), base="tiny:0", init="base", prompt=TASK_PROMPT,
        steps=40, groups_per_step=1, group_online=6,
        group_offline=0, rollout_steps=2, reward="color-stats", lora_rank=4, lora_alpha=4, resolution=32,
        learning_rate=3e-2, validate_every=20, checkpoint_every=1000,
    )  # fmt: skip
    out = train_nft(settings, tiny=True, cache_dir=tmp_path / "cache")
    lines = [json.loads(line) for line in (out / "logs" / "metrics.jsonl").read_text().splitlines()]
    curve = {line["step"]: line["reward/validation"] for line in lines if "reward/validation" in line}
    assert list(curve) == [0, 20, 40]
    assert curve[40] > curve[0] + 0.05, curve  # the reachable range is about 1.0-1.5 on this pair
    rollouts = [line["reward/online_raw"] for line in lines if "loss" in line]
    assert np.mean(rollouts[-10:]) > np.mean(rollouts[:10]) + 0.05


def test_resumed_nft_run_equals_uninterrupted_run(inputs, tmp_path):
    cache = tmp_path / "cache"
    straight = train_nft(config(inputs, tmp_path / "straight", steps=3), tiny=True, cache_dir=cache)
    resumed = tmp_path / "resumed"
    train_nft(config(inputs, resumed, steps=2, checkpoint_every=1), tiny=True, cache_dir=cache)  # "killed" after step 2
    train_nft(config(inputs, resumed, steps=3), tiny=True, cache_dir=cache, resume="latest")
    expected, got = load_file(straight / LORA_FILE), load_file(resumed / LORA_FILE)
    assert expected.keys() == got.keys() and all(torch.equal(expected[k], got[k]) for k in expected)


def test_example_offline_samples_load_and_say_they_are_scored_by_rule(inputs, tmp_path):
    from seminft_bench.model.rewards import EXAMPLE_RULE, load_offline_samples, write_example_offline_samples

    samples = load_offline_samples(write_example_offline_samples(inputs[0], tmp_path / "offline", count=2))
    assert len(samples) == 2 * len(EXAMPLE_RULE)
    assert all(s.note.startswith("EXAMPLE, scored by rule, not by people") for s in samples)
    assert sorted({s.score for s in samples}) == sorted(score for score, _ in EXAMPLE_RULE.values())


def test_cli_steps_zero_without_offline_saves_the_untrained_rl_lora(inputs, tmp_path):
    from typer.testing import CliRunner

    from seminft_bench.cli.train import app

    out = tmp_path / "w-o-rl"
    result = CliRunner().invoke(app, [
        "nft", "--tiny", "--dataset", str(inputs[0]), "--coldstart-lora", str(inputs[1]), "--reward", "color-stats",
        "--offline-samples", str(inputs[2]), "--no-offline", "--max-steps", "0", "--resolution", "48", "--out", str(out),
        "--cache", str(tmp_path / "cache"),
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    rl = load_file(out / LORA_FILE)
    assert all(bool((t == 0).all()) for k, t in rl.items() if "lora_B" in k)  # no step: B keeps its zero init
    assert "offline_samples: null" in (out / "config.yaml").read_text()
    elsewhere = CliRunner().invoke(app, [  # at the default working area, not the cold-start LoRA's 48²
        "nft", "--tiny", "--dataset", str(inputs[0]), "--coldstart-lora", str(inputs[1]), "--reward", "color-stats",
        "--max-steps", "0", "--out", str(tmp_path / "y"), "--cache", str(tmp_path / "cache"),
    ])  # fmt: skip
    assert elsewhere.exit_code == 2 and "differ in pixel_area (2304 and 4096)" in elsewhere.output
    bad = CliRunner().invoke(app, ["nft", "--tiny", "--dataset", str(inputs[0]), "--out", str(tmp_path / "x")])
    assert bad.exit_code != 0 and "coldstart_lora" in bad.output


RANK_SCRIPT = """
import os, sys
from safetensors.torch import save_file
from seminft_bench.model import nft
from seminft_bench.model.config import NFTConfig, load_config
from seminft_bench.model.lora import lora_state

seen = []
original = nft.save_lora
nft.save_lora = lambda flux, *a, **k: (seen.append(flux), original(flux, *a, **k))[1]
nft.train_nft(load_config(sys.argv[1], NFTConfig), tiny=True, cache_dir=sys.argv[2])
if seen:  # the main process saves; train_nft has checked that every rank holds the same rl LoRA
    state = {name: tensor.contiguous() for name, tensor in lora_state(seen[-1], "rl").items()}
    save_file(state, os.path.join(sys.argv[3], "rank0.safetensors"))
"""


def test_two_cpu_processes_train_one_rl_lora(inputs, tmp_path):
    import os
    import socket
    import subprocess
    import sys

    from seminft_bench.model.config import save_config

    out = tmp_path / "ddp"
    config_file = save_config(config(inputs, out, steps=2, groups_per_step=2), tmp_path / "nft.yaml")
    script = tmp_path / "rank.py"
    script.write_text(RANK_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", port,
               str(script), str(config_file), str(tmp_path / "cache"), str(tmp_path)]  # fmt: skip
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    saved = load_file(out / LORA_FILE)
    assert any("lora_B" in k and bool(t.abs().sum() > 0) for k, t in saved.items())
    rank0 = load_file(tmp_path / "rank0.safetensors")
    saved = {key.removeprefix("transformer."): value for key, value in saved.items()}
    assert rank0.keys() == saved.keys() and all(torch.equal(saved[k], v) for k, v in rank0.items())
    lines = [json.loads(line) for line in (out / "logs" / "metrics.jsonl").read_text().splitlines()]
    lines = [line for line in lines if "loss" in line]  # not the validation curve's start
    assert len(lines) == 2 and all(np.isfinite(line["reward/online_raw"]) for line in lines)


@pytest.mark.parametrize("variant", ["init base", "cold-start pairs", "kl and plain eq. 1"])
def test_table_3_ablations_train(inputs, tmp_path, variant):
    if variant == "init base":  # "w/o cold-start": the rl LoRA on the bare base
        settings = config(inputs, tmp_path / "run", steps=1, init="base", coldstart_lora=None)
    elif variant == "kl and plain eq. 1":  # the KL term on, the reference's adaptive weighting off
        settings = config(inputs, tmp_path / "run", steps=1, kl_weight=0.1, adaptive_weighting=False)
    else:  # "w/o realistic dataset": the synthetic cold-start pairs instead of the RL pairs
        settings = config(inputs, tmp_path / "run", steps=1, dataset=str(write_pairs(tmp_path / "cs", with_targets=True)))
    out = train_nft(settings, tiny=True, cache_dir=tmp_path / "cache")
    assert any("lora_B" in k and bool(t.abs().sum() > 0) for k, t in load_file(out / LORA_FILE).items())
    lora = [out] if variant == "init base" else [inputs[1], out]
    names = ["rl"] if variant == "init base" else None
    pipe = SemiNFTPipeline.from_pretrained("tiny:0", lora=lora, adapter_names=names)
    assert set(pipe.lora_hashes()) == ({"rl"} if variant == "init base" else {"coldstart", "rl"})
