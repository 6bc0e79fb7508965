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
from seminft_bench.model.components import tiny_components
from seminft_bench.model.config import NFTConfig, SFTConfig
from seminft_bench.model.lora import LORA_FILE, lora_state, save_lora
from seminft_bench.model.nft import train_nft
from seminft_bench.model.pipeline import SemiNFTPipeline
from seminft_bench.model.sft import ADAPTER, add_coldstart_lora

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")


def write_pairs(folder: Path) -> Path:
    """An RL-pairs folder (`build-rl` columns that training reads: id, source, reference, prompt)."""
    rows = {"id": [], "source": [], "reference": []}
    for i, name in enumerate(PHOTOS):
        rows["id"].append(f"pair-{i}")
        rows["source"].append(Image.fromarray(sample_photo(name)).resize((48, 32)))
        rows["reference"].append(Image.fromarray(sample_photo(PHOTOS[(i + 1) % 4])).resize((32, 32)))
    features = datasets.Features({"id": datasets.Value("string"), "source": datasets.Image(), "reference": datasets.Image()})
    (folder / "data").mkdir(parents=True, exist_ok=True)
    datasets.Dataset.from_dict(rows, features=features).to_parquet(folder / "data" / "train-00000-of-00001.parquet")
    return folder


def write_coldstart_lora(folder: Path) -> Path:
    """A cold-start LoRA with non-zero weights (so freezing it is visible) for the tiny:0 transformer."""
    flux = tiny_components(0).transformer
    add_coldstart_lora(flux, SFTConfig(lora_rank=4, lora_alpha=4))
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, parameter in flux.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)
    save_lora(flux, folder, ADAPTER)
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
        steps=3, group_online=3, group_offline=2, rollout_steps=2, reward="color-stats", lora_rank=4, lora_alpha=4,
        resolution=48, learning_rate=1e-2, validate_every=1000, checkpoint_every=1000,
    )
    return NFTConfig().override(**{**settings, **overrides})


def test_tiny_nft_trains_rl_leaves_coldstart_bit_identical_and_loads_in_the_pipeline(inputs, tmp_path):
    out = train_nft(config(inputs, tmp_path / "run"), tiny=True, cache_dir=tmp_path / "cache")
    rl = load_file(out / LORA_FILE)
    assert any("lora_B" in key and bool(tensor.abs().sum() > 0) for key, tensor in rl.items())  # rl moved from its zero init
    pipe = SemiNFTPipeline.from_pretrained("tiny:0", lora=[inputs[1], out])
    assert pipe.lora_hashes().keys() == {"coldstart", "rl"}
    lines = [json.loads(line) for line in (out / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 3 and all(np.isfinite(line["loss"]) for line in lines)
    assert all(0 <= line["reward/online_raw"] <= 5 and line["reward/offline_raw"] > 0 for line in lines)
    assert all(line["reward/failed"] == 0 for line in lines)
    source, reference = sample_photo("astronaut"), sample_photo("coffee")
    with_rl = pipe.denoise(source, reference, num_inference_steps=2, generator=torch.Generator().manual_seed(0))
    only_coldstart = SemiNFTPipeline.from_pretrained("tiny:0", lora=[inputs[1]]).denoise(
        source, reference, num_inference_steps=2, generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert not torch.allclose(with_rl, only_coldstart)  # the rl LoRA changes what the pipeline makes


def test_coldstart_weights_are_bit_identical_after_training(inputs, tmp_path, monkeypatch):
    from seminft_bench.model import nft

    seen = []
    original = nft.save_lora
    monkeypatch.setattr(nft, "save_lora", lambda flux, *a, **k: (seen.append(flux), original(flux, *a, **k))[1])
    train_nft(config(inputs, tmp_path / "run", steps=2), tiny=True, cache_dir=tmp_path / "cache")
    after = lora_state(seen[-1], ADAPTER)
    before = {k.removeprefix("transformer."): v for k, v in load_file(inputs[1] / LORA_FILE).items()}
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
