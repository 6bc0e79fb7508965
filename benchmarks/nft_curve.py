"""The tiny NFT run's reward curve on one fixed pair (issue #12): does DiffusionNFT raise the reward it is given?

    .venv/bin/python benchmarks/nft_curve.py [--steps 100] [--every 10]

One (source, reference) pair from scikit-image's photos at 32², the tiny random FLUX with no
cold-start LoRA, the weight-free `ColorStatsReward`, G_online = 6, T = 2, no offline anchors.
The curve is ``reward/validation``: the rl policy's mean reward over 6 samples of the pair from
fixed noise, so every point is scored on the same noise. Prints it, the rollouts' mean reward
per stretch of steps, and the wall time.
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

import datasets
import numpy as np
from PIL import Image

from seminft_bench.imaging import sample_photo
from seminft_bench.model.config import NFTConfig
from seminft_bench.model.nft import train_nft


def one_pair(folder: Path) -> Path:
    rows = {"id": ["pair-0"], "source": [Image.fromarray(sample_photo("astronaut")).resize((32, 32))],
            "reference": [Image.fromarray(sample_photo("coffee")).resize((32, 32))]}  # fmt: skip
    features = datasets.Features({"id": datasets.Value("string"), "source": datasets.Image(), "reference": datasets.Image()})
    (folder / "data").mkdir(parents=True)
    datasets.Dataset.from_dict(rows, features=features).to_parquet(folder / "data" / "train-00000-of-00001.parquet")
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--every", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        config = NFTConfig().override(
            dataset=str(one_pair(scratch / "pair")), out=str(scratch / "run"), base="tiny:0", init="base",
            steps=args.steps, group_online=6, group_offline=0, rollout_steps=2, reward="color-stats", lora_rank=4,
            lora_alpha=4, resolution=32, learning_rate=3e-2, validate_every=args.every, checkpoint_every=10**9,
        )  # fmt: skip
        started = time.perf_counter()
        train_nft(config, tiny=True, cache_dir=scratch / "cache")
        seconds = time.perf_counter() - started
        lines = [json.loads(line) for line in (scratch / "run" / "logs" / "metrics.jsonl").read_text().splitlines()]
    curve = [(line["step"], line["reward/validation"]) for line in lines if "reward/validation" in line]
    rollouts = [line["reward/online_raw"] for line in lines if "loss" in line]
    print(f"tiny NFT on one fixed pair, ColorStatsReward (0-5), {args.steps} steps in {seconds:.0f} s ({seconds / args.steps:.2f} s/step)")
    print("  step  validation reward (fixed noise)  rollouts' mean reward since the last point")
    for (step, value), (previous, _) in zip(curve, [(0, None), *curve]):
        stretch = rollouts[previous:step]
        print(f"  {step:4d}  {value:.4f}                          {np.mean(stretch):.4f}" if stretch else f"  {step:4d}  {value:.4f}")


if __name__ == "__main__":
    main()
