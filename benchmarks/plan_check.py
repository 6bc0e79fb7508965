"""`seminft-train plan` against a real step on this CPU: the step's memory as the plan predicts it on the meta device,
and as PyTorch's CPU allocator peaks in a float32 SFT step of random weights (`plan.allocated_peak`), same config.

    .venv/bin/python benchmarks/plan_check.py            # the tiny config, and FLUX.1-dev's width with 1 + 1 blocks at 512²
    .venv/bin/python benchmarks/plan_check.py --quick    # the medium one at 128² instead of 512²
"""

import argparse
import time

import torch

from seminft_bench.model import plan
from seminft_bench.model.components import FLUX_DEV_TRANSFORMER, TINY_TRANSFORMER
from seminft_bench.model.config import SFTConfig

VARIANTS = [(False, "all"), (True, "all"), (True, "main")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="The medium model at 128², not 512².")
    args = parser.parse_args()
    medium_side = 16 if args.quick else 64
    models = {
        "tiny (2 + 2 blocks, width 32) at 64²": (TINY_TRANSFORMER, plan.Shapes(8, 4, 16)),
        f"FLUX.1-dev width (1 + 1 blocks) at {8 * medium_side}²": (
            dict(FLUX_DEV_TRANSFORMER, num_layers=1, num_single_layers=1), plan.Shapes(512, 16, medium_side)),
    }  # fmt: skip
    print(f"{'model':42} {'checkpointing':13} {'lora_on':7} {'plan MiB':>9} {'real MiB':>9} {'plan/real':>9}")
    for label, (model, shapes) in models.items():
        for checkpointing, lora_on in VARIANTS:
            config = SFTConfig(lora_rank=16, lora_alpha=16, gradient_checkpointing=checkpointing, lora_on=lora_on)
            started = time.perf_counter()
            predicted = plan.sft_cost(config, model, shapes, checkpointing, lora_on, dtype=torch.float32).live
            measured = plan.cpu_sft_step_bytes(model, shapes, config)
            print(f"{label:42} {'on' if checkpointing else 'off':13} {lora_on:7} {predicted / 2**20:9.1f} "
                  f"{measured / 2**20:9.1f} {predicted / measured:9.3f}   ({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
