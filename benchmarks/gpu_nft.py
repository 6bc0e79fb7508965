"""One DiffusionNFT iteration on one GPU at FLUX.1-dev's size: the time of each phase and the peak memory,
with random bf16 weights built on the GPU (no download).

    .venv/bin/python benchmarks/gpu_nft.py            # FLUX.1-dev-sized transformer and VAE, CUDA, bf16
    .venv/bin/python benchmarks/gpu_nft.py --tiny     # the tiny components on CPU (to debug this script)

The iteration is the training loop's own code (`seminft_bench.model.nft`) on one group (the loop
takes ``groups_per_step`` of them per update): G_online = 6 rollouts of the old policy (coldstart +
old LoRAs) in one batch, T = 6 Euler steps with the condition cache, at 512² (1,024 noisy + 2 × 1,024
condition tokens, 512 text tokens), decoded and scored by `ColorStatsReward` (CPU); G_offline = 3
anchors; Eq. 5–6; one training pass of Eq. 1 with the adaptive weighting over the 9 members at the 6
rollout noise levels (gradient checkpointing, the rank-32 LoRA); AdamW and the soft update of ``old``. A first iteration warms up; the second is timed. Paper anchor (§4.1): the RL stage
took about 150 GPU-hours.
"""

import argparse
import tempfile
from dataclasses import replace
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import numpy as np
import torch
from accelerate import Accelerator
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
from PIL import Image

from seminft_bench.imaging import sample_photo
from seminft_bench.model import nft, plan
from seminft_bench.model.caches import LatentCache, PromptEmbeddings, PromptEncoder, image_digest
from seminft_bench.model.components import (
    FLUX_DEV_TRANSFORMER, FLUX_DEV_VAE, FLUX_SCHEDULER_CONFIG, FluxComponents, tiny_components,
)  # fmt: skip
from seminft_bench.model.config import NFTConfig
from seminft_bench.model.lora import adapter_parameters, add_lora, set_trainable
from seminft_bench.model.pipeline import SemiNFTPipeline
from seminft_bench.model.rewards import ColorStatsReward, OfflineSample
from seminft_bench.model.training import Sample, adamw, latent_key
from seminft_bench.pipelines.quadruplets import TASK_PROMPT

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")


def flux_dev_components(device: torch.device) -> FluxComponents:
    """Random transformer and VAE with FLUX.1-dev's shapes, built on ``device`` in bf16."""
    torch.manual_seed(0)
    with torch.device(device):  # 12B random parameters never touch the host
        transformer = FluxTransformer2DModel(**FLUX_DEV_TRANSFORMER).to(torch.bfloat16)
        vae = AutoencoderKL(**FLUX_DEV_VAE).to(torch.bfloat16)
    scheduler = FlowMatchEulerDiscreteScheduler(**FLUX_SCHEDULER_CONFIG)
    return FluxComponents(transformer=transformer.eval(), vae=vae.eval(), scheduler=scheduler, base="random FLUX.1-dev")


def build(tiny: bool, device: torch.device, config: NFTConfig) -> SemiNFTPipeline:
    """The pipeline with the three LoRAs of the RL stage: ``coldstart`` (frozen), ``rl`` (trained) and ``old``."""
    if tiny:
        components, prompts = tiny_components(0), PromptEncoder.tiny(0)
    else:
        components = flux_dev_components(device)
        dims = FLUX_DEV_TRANSFORMER
        embeddings = PromptEmbeddings(
            torch.randn(1, 512, dims["joint_attention_dim"]), torch.randn(1, dims["pooled_projection_dim"]),
            torch.zeros(512, 3),
        )
        prompts = PromptEncoder("random", lambda prompt: embeddings)
    pipe = SemiNFTPipeline(components, prompts, device=device, pixel_area=config.resolution**2)
    flux = components.transformer
    flux.requires_grad_(False)
    for adapter in (nft.COLDSTART_ADAPTER, nft.RL_ADAPTER, nft.OLD_ADAPTER):
        add_lora(flux, adapter, rank=config.lora_rank, alpha=config.lora_alpha,
                 target_modules=config.lora_target_modules, seed=0)  # fmt: skip
        pipe.lora_on[adapter] = "all"
    pipe.set_adapters([nft.COLDSTART_ADAPTER, nft.RL_ADAPTER])
    set_trainable(flux, nft.RL_ADAPTER)
    flux.enable_gradient_checkpointing()
    return pipe


class OnePair:
    """One pair as the loop reads pairs: a `Sample`, its latents in a `LatentCache`, its images by id."""

    def __init__(self, pipe: SemiNFTPipeline, pictures: dict[str, Image.Image], folder: str):
        self.pictures = pictures
        self.cache = LatentCache(folder, "random")
        digests = {role: image_digest(image.tobytes()) for role, image in pictures.items()}
        sizes = {role: image.size for role, image in pictures.items()}
        self.sample = Sample("pair", TASK_PROMPT, sizes["source"], sizes["reference"], digests)
        for role, image in pictures.items():
            self.cache.put(latent_key(self.sample, role, pipe), pipe.encode_image(image))

    def pair(self, sample_id: str) -> dict[str, Image.Image]:
        return self.pictures


def photo(name: str, side: int) -> Image.Image:
    return Image.fromarray(sample_photo(name)).resize((side, side), Image.Resampling.LANCZOS)


class Phases:
    """Wall time per named phase, the GPU synchronised at both ends of each."""

    def __init__(self, device: torch.device):
        self.device, self.seconds = device, {}

    @contextmanager
    def __call__(self, name: str):
        self._sync()
        started = time.perf_counter()
        yield
        self._sync()
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()


def iteration(pipe, optimizer, accelerator, config, pair, offline, offline_latents, reward, scorer, step):
    """One iteration of `nft.train_nft`'s loop on one pair, timed phase by phase."""
    phases = Phases(pipe.device)
    generator = torch.Generator().manual_seed(step)
    with phases("rollout (6 x 6 steps, cache), decode"):
        groups = nft.rollout(pipe, config, [pair.sample], pair.cache, pair, reward, scorer, generator)
    with phases("reward (colour statistics, CPU)"):
        batches, rewards, failed = nft.normalise(groups, offline, offline_latents, config.group_offline, np.random.default_rng(step))
    with phases("loss: forward + backward, 9 members x 6 levels"):
        loss = nft.accumulate_gradients(pipe, config, batches, generator, accelerator)
    with phases("AdamW + soft update"):
        flux = pipe.components.transformer
        old, rl = adapter_parameters(flux, nft.OLD_ADAPTER), adapter_parameters(flux, nft.RL_ADAPTER)
        nft.optimizer_step(accelerator, optimizer, rl, config.max_grad_norm)
        nft.soft_update(old, rl, nft.old_decay(step + 1))
    return phases.seconds, loss, rewards, failed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="The tiny components on CPU.")
    args = parser.parse_args()
    device = torch.device("cpu" if args.tiny or not torch.cuda.is_available() else "cuda")
    config = NFTConfig(reward="color-stats", resolution=64 if args.tiny else 512)
    started = time.perf_counter()
    pipe = build(args.tiny, device, config)
    accelerator = Accelerator(mixed_precision="no" if device.type == "cpu" else "bf16", cpu=device.type == "cpu")
    optimizer = accelerator.prepare(adamw(adapter_parameters(pipe.components.transformer, nft.RL_ADAPTER), config.learning_rate))
    side = config.resolution
    pair = OnePair(pipe, {"source": photo("astronaut", side), "reference": photo("coffee", side)}, tempfile.mkdtemp())
    offline = [OfflineSample(f"anchor-{i}", photo(PHOTOS[i], side), photo(PHOTOS[i + 1], side), photo(PHOTOS[i], side), 1.0 + i)
               for i in range(config.group_offline)]  # fmt: skip
    offline_latents = {sample.id: nft.encode_offline(pipe, sample) for sample in offline}
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    print(f"{'tiny' if args.tiny else 'FLUX.1-dev-sized'} transformer and VAE on {name}, built in {time.perf_counter() - started:.0f} s; "
          f"{side}² images, G = {config.group_online} + {config.group_offline}, T = {config.rollout_steps}")  # fmt: skip
    reward, scorer = ColorStatsReward(), ThreadPoolExecutor(1)
    iteration(pipe, optimizer, accelerator, config, pair, offline, offline_latents, reward, scorer, 0)  # warm-up
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    seconds, loss, rewards, failed = iteration(pipe, optimizer, accelerator, config, pair, offline, offline_latents, reward, scorer, 1)
    total = sum(seconds.values())
    for phase, value in seconds.items():
        print(f"  {phase:48} {value:7.2f} s  {100 * value / total:4.0f}%")
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else 0.0
    card = plan.gpu_of(name)
    planned = plan.plan_nft(replace(config, base="tiny:0" if args.tiny else config.base, groups_per_step=1,
                                    offline_samples="anchors"), card).figures  # fmt: skip
    print(f"  iteration {total:.2f} s [plan for {card.name}: {planned['group seconds']:.2f} s of transformer FLOPs at "
          f"{plan.UTILISATION:.0%}], peak memory {peak:.1f} GiB [{planned['peak'] / 2**30:.1f} GiB]; loss {loss:.4f}, "
          f"online reward {np.mean(rewards['reward/online_raw']):.3f}, {failed} failed")  # fmt: skip
    unit = "GPU-hours" if device.type == "cuda" else "hours on this CPU"
    print(f"  at this rate one update of {config.groups_per_step} groups takes {total * config.groups_per_step / 3600:.2f} {unit} "
          "(paper: about 150 GPU-hours for the RL stage)")


if __name__ == "__main__":
    main()
