"""The tiny NFT run's reward curve on one fixed pair (issue #12): does DiffusionNFT raise the reward it is given?

    .venv/bin/python benchmarks/nft_curve.py [--steps 100] [--every 10]

One (source, reference) pair from scikit-image's photos at 32², the tiny random FLUX with no
cold-start LoRA, the weight-free `ColorStatsReward`, G_online = 6, T = 2, no offline anchors, one
group per update. The curve is ``reward/validation``: the rl policy's mean reward over 6 samples of
the pair from fixed noise, so every point is scored on the same noise. It is run with the config's
defaults (DiffusionNFT's adaptive weighting and loss scale) and with one setting changed at a time
(`VARIANTS`); prints each curve, the rollouts' mean reward at the start and the end, and the wall time.
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
from seminft_bench.pipelines.quadruplets import TASK_PROMPT


def one_pair(folder: Path) -> Path:
    rows = {"id": ["pair-0"], "source": [Image.fromarray(sample_photo("astronaut")).resize((32, 32))],
            "reference": [Image.fromarray(sample_photo("coffee")).resize((32, 32))]}  # fmt: skip
    features = datasets.Features({"id": datasets.Value("string"), "source": datasets.Image(), "reference": datasets.Image()})
    (folder / "data").mkdir(parents=True)
    datasets.Dataset.from_dict(rows, features=features).to_parquet(folder / "data" / "train-00000-of-00001.parquet")
    return folder


VARIANTS = {
    "defaults": {},
    "no adaptive weighting": {"adaptive_weighting": False},
    "no adaptive weighting, scale 1 (before issue 17)": {"adaptive_weighting": False, "loss_scale": 1.0},
    "kl 1e-4 (the reference's)": {"kl_weight": 1e-4},
    "sign flipped (control)": {"loss_scale": -5.0},
}
"""The NFT settings compared: the config's defaults, then one change each."""


def curve(scratch: Path, steps: int, every: int, changes: dict) -> tuple[list[tuple[int, float]], list[float], float]:
    """The validation curve [(step, reward)], the rollouts' rewards per step, and the wall time of one run."""
    config = NFTConfig().override(
        dataset=str(one_pair(scratch / "pair")), out=str(scratch / "run"), base="tiny:0", init="base",
        prompt=TASK_PROMPT, steps=steps, groups_per_step=1, group_online=6, group_offline=0, rollout_steps=2,
        reward="color-stats", lora_rank=4, lora_alpha=4, resolution=32, learning_rate=3e-2, validate_every=every,
        checkpoint_every=10**9, **changes,
    )  # fmt: skip
    started = time.perf_counter()
    train_nft(config, tiny=True, cache_dir=scratch / "cache")
    seconds = time.perf_counter() - started
    lines = [json.loads(line) for line in (scratch / "run" / "logs" / "metrics.jsonl").read_text().splitlines()]
    points = [(line["step"], line["reward/validation"]) for line in lines if "reward/validation" in line]
    return points, [line["reward/online_raw"] for line in lines if "loss" in line], seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--every", type=int, default=10)
    parser.add_argument("--variant", action="append", choices=list(VARIANTS), help="Repeatable; default: all.")
    args = parser.parse_args()
    for name in args.variant or VARIANTS:
        with tempfile.TemporaryDirectory() as scratch:
            points, rollouts, seconds = curve(Path(scratch), args.steps, args.every, VARIANTS[name])
        print(f"{name}: tiny NFT on one fixed pair, ColorStatsReward (0-5), {args.steps} steps in {seconds:.0f} s")
        print("  validation reward (fixed noise) at steps " + ", ".join(str(step) for step, _ in points))
        print("  " + ", ".join(f"{value:.3f}" for _, value in points))
        print(f"  rollouts' mean reward: first 10 steps {np.mean(rollouts[:10]):.3f}, last 10 {np.mean(rollouts[-10:]):.3f}")


if __name__ == "__main__":
    main()
