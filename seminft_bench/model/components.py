"""The FLUX.1-dev parts SemiNFT runs on: transformer, VAE and scheduler.

They come either from local files (a folder in diffusers' layout, or a hub id already in
the local Hugging Face cache; nothing is ever downloaded) or as tiny random components
that run on a CPU in tests and demos. The text encoders are not here: the one task prompt
is encoded once and cached (`caches.prompt_embeddings`), so nothing else needs them.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel

from seminft_bench.errors import MissingWeightsError
from seminft_bench.model.config import DEFAULT_BASE

SUBFOLDERS = ("transformer", "vae", "scheduler")
TINY_PREFIX = "tiny:"

# FLUX.1-dev's scheduler/scheduler_config.json: resolution-dependent shift of the sigmas.
FLUX_SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    shift=3.0,
    use_dynamic_shifting=True,
    base_shift=0.5,
    max_shift=1.15,
    base_image_seq_len=256,
    max_image_seq_len=4096,
)


@dataclass
class FluxComponents:
    """The denoiser, the VAE and the scheduler of one base model, with FLUX's latent conventions."""

    transformer: FluxTransformer2DModel
    vae: AutoencoderKL
    scheduler: FlowMatchEulerDiscreteScheduler
    base: str
    """The model id or folder they were loaded from, or ``"tiny:SEED"``."""

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent cell along each side, computed as `FluxPipeline` does."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Latents of ``images`` (``B×3×H×W`` in [0, 1]), shifted and scaled as the transformer expects.

        Uses the posterior's mode (its mean), as `FluxKontextPipeline` does for its context
        image, rather than a sample: the same image always gives the same latents, which is
        what lets them be cached on disk and reused across epochs.
        """
        pixels = images.to(device=self.vae.device, dtype=self.vae.dtype) * 2 - 1
        latents = self.vae.encode(pixels).latent_dist.mode()
        return (latents - self.vae.config.shift_factor) * self.vae.config.scaling_factor

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] (``B×3×H×W``) from latents of `encode` or the denoiser: its exact inverse scaling."""
        latents = latents.to(device=self.vae.device, dtype=self.vae.dtype)
        latents = latents / self.vae.config.scaling_factor + self.vae.config.shift_factor
        images = self.vae.decode(latents).sample
        return (images / 2 + 0.5).clamp(0, 1)


FLUX_DEV_TRANSFORMER = dict(
    patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128, num_attention_heads=24,
    joint_attention_dim=4096, pooled_projection_dim=768, axes_dims_rope=(16, 56, 56), guidance_embeds=True,
)
"""FLUX.1-dev's transformer/config.json: 12B parameters, for random models at the real size (GPU benchmarks)."""
FLUX_DEV_VAE = dict(
    in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=16, norm_num_groups=32,
    scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False, use_post_quant_conv=False,
)
"""FLUX.1-dev's vae/config.json (the keys that shape it)."""

TINY_TRANSFORMER = dict(
    patch_size=1, in_channels=16, num_layers=2, num_single_layers=2, attention_head_dim=16, num_attention_heads=2,
    joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=(4, 6, 6), guidance_embeds=True,
)
"""The tiny transformer: two blocks of each kind, width 32; 16 input channels = 2×2 patches of the tiny VAE's 4."""


def tiny_components(seed: int = 0, *, dtype: torch.dtype = torch.float32) -> FluxComponents:
    """Random components shaped like FLUX's but tiny, bit-identical for the same seed.

    The VAE has 4 latent channels (FLUX's has 16) and downsamples by 4 (FLUX's by 8), so a
    64×64 image becomes 8×8 = 64 tokens after 2×2 packing and a whole denoising loop runs
    on a CPU in seconds. Scaling and shift factors are FLUX's, so the latent maths is the
    real one. Its group norms have one group: with a group per channel, as a random decoder
    would otherwise have, every channel is normalised on its own and every latent decodes to
    the same mean colour, so no colour reward could tell the tiny model's samples apart.
    The global random state is left untouched.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 3,
            up_block_types=("UpDecoderBlock2D",) * 3,
            block_out_channels=(8, 16, 16),
            layers_per_block=1,
            latent_channels=4,
            norm_num_groups=1,
            scaling_factor=0.3611,
            shift_factor=0.1159,
            use_quant_conv=False,
            use_post_quant_conv=False,
        )
        transformer = FluxTransformer2DModel(**TINY_TRANSFORMER)
    if dtype != torch.float32:  # diffusers warns about any cast, even to the dtype a model has
        transformer, vae = transformer.to(dtype), vae.to(dtype)
    return FluxComponents(
        transformer=transformer.eval(),
        vae=vae.eval(),
        scheduler=FlowMatchEulerDiscreteScheduler(**FLUX_SCHEDULER_CONFIG),
        base=f"{TINY_PREFIX}{seed}",
    )


def load_components(
    base: str | os.PathLike = DEFAULT_BASE,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    quantize: str | None = None,
) -> FluxComponents:
    """Transformer, VAE and scheduler of ``base``, from local files only.

    ``base`` is a folder in diffusers' layout (``transformer/``, ``vae/``, ``scheduler/``), a
    hub id already in the local Hugging Face cache, or ``"tiny:SEED"``. ``device`` defaults
    to CUDA when present; ``dtype`` to bfloat16 on CUDA (FLUX's own precision) and float32
    on CPU (bf16 matmuls are slow or missing there). Raises `MissingWeightsError` when the
    model or one of its parts is not on this machine.

    ``quantize`` stores the frozen transformer's weights as ``"nf4"`` (bitsandbytes, CUDA only)
    or ``"float8"`` (torchao, weight-only e4m3) for 24–48 GB cards; LoRA layers train on top.
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    base = os.fspath(base)
    if base.startswith(TINY_PREFIX):
        if quantize:
            raise ValueError(f"quantize {quantize!r} applies when loading a saved model: save the tiny one to a folder first")
        components = tiny_components(_tiny_seed(base), dtype=dtype)
    else:
        components = _load_from_folder(locate_weights(base), base, dtype, quantization_config(quantize, device))
    components.transformer.to(device)
    components.vae.to(device)
    return components


def _tiny_seed(base: str) -> int:
    seed = base.removeprefix(TINY_PREFIX)
    if not seed.isdigit():
        raise ValueError(f"tiny components are named {TINY_PREFIX}SEED with an integer seed, got {base!r}")
    return int(seed)


def locate_weights(base: str) -> Path:
    """``base`` itself when it is a folder, else its snapshot in the local Hugging Face cache."""
    if Path(base).is_dir():
        return Path(base)
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(base, local_files_only=True))
    except (HFValidationError, LocalEntryNotFoundError) as error:
        raise MissingWeightsError(
            f"base model {base!r} not found: not a folder, and not in the Hugging Face cache "
            f"{constants.HF_HUB_CACHE} (set by HF_HUB_CACHE or HF_HOME). {how_to_provide(base)}"
        ) from error


def how_to_provide(base: str) -> str:
    """The instructions every missing-weights message ends with."""
    hub_id = base if not Path(base).exists() and base.count("/") == 1 else DEFAULT_BASE
    return (
        f"On a machine with network access, accept the model's licence at https://huggingface.co/{hub_id} "
        f"(FLUX.1-dev is gated), run `hf download {hub_id}` and copy that Hugging Face cache here, pointing "
        "HF_HOME or HF_HUB_CACHE at it; or pass a local folder in diffusers' layout "
        f"({', '.join(f'{name}/' for name in SUBFOLDERS)})"
    )


def quantization_config(kind: str | None, device: torch.device):
    """diffusers' quantisation config of the transformer: NF4 through bitsandbytes, float8 through torchao."""
    if kind is None:
        return None
    if kind == "nf4":
        if device.type != "cuda":
            raise ValueError(f"quantize nf4 runs on CUDA GPUs only (bitsandbytes); this run is on {device.type}")
        from diffusers import BitsAndBytesConfig

        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16)
    if kind == "float8":
        from diffusers import TorchAoConfig
        from torchao.quantization import Float8WeightOnlyConfig

        return TorchAoConfig(Float8WeightOnlyConfig())
    raise ValueError(f"quantize must be nf4 or float8, got {kind!r}")


def _load_from_folder(folder: Path, base: str, dtype: torch.dtype, quantization=None) -> FluxComponents:
    missing = [name for name in SUBFOLDERS if not (folder / name).is_dir()]
    if missing:
        raise MissingWeightsError(
            f"base model {base!r} at {folder} lacks {', '.join(f'{name}/' for name in missing)}. {how_to_provide(base)}"
        )
    try:
        transformer = FluxTransformer2DModel.from_pretrained(
            folder, subfolder="transformer", dtype=dtype, local_files_only=True, quantization_config=quantization
        )
        vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", dtype=dtype, local_files_only=True)
        scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(
            folder, subfolder="scheduler", local_files_only=True
        )
    except OSError as error:
        raise MissingWeightsError(
            f"base model {base!r} at {folder} is incomplete ({error}). {how_to_provide(base)}"
        ) from error
    return FluxComponents(transformer=transformer, vae=vae, scheduler=scheduler, base=base)


def base_identity(transformer: torch.nn.Module) -> str:
    """A short hash of the transformer's config: what a LoRA's record names as its base.

    Private entries (``_name_or_path``, ``_diffusers_version``) and the quantisation are left out, so the
    same model from another folder, or stored in float8, keeps its identity, and a LoRA trained on one
    runs on the other.
    """
    config = {
        key: value for key, value in dict(transformer.config).items()
        if not key.startswith("_") and key != "quantization_config"
    }
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def lora_target_regex(modules: Sequence[str]) -> str:
    """A PEFT ``target_modules`` pattern for ``modules`` (paths inside a block) in every FLUX block, and nowhere else.

    PEFT matches a list of names by suffix, so ``"proj_out"`` would also hit the model's
    final output projection; a string is matched as a regex against the full module name,
    which lets the pattern be anchored to ``transformer_blocks.N.`` and
    ``single_transformer_blocks.N.``.
    """
    names = "|".join(re.escape(name) for name in modules)
    return rf"(?:single_)?transformer_blocks\.\d+\.(?:{names})"
