"""LoRA adapters on the FLUX transformer: add one, save it in diffusers' format, read it back checked.

Both training stages use these: SFT trains ``coldstart``, NFT trains ``rl`` (with ``old``, its
slow copy) over the frozen ``coldstart``. Beside each ``pytorch_lora_weights.safetensors`` a
small ``seminft_lora.json`` records how the adapter was trained (``lora_on``), because a LoRA
trained on the main branch only must also run that way at inference: the pipeline reads it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch

from seminft_bench.errors import first_few
from seminft_bench.fileio import atomic_write_text
from seminft_bench.model.components import lora_target_regex

LORA_FILE = "pytorch_lora_weights.safetensors"
TRAINING_FILE = "seminft_lora.json"
LoraOn = Literal["all", "main"]


class LoraMismatchError(ValueError):
    """A LoRA file whose layers or shapes do not belong to this transformer or this run's LoRA settings."""


def add_lora(
    flux: torch.nn.Module, adapter: str, *, rank: int, alpha: int, target_modules: Sequence[str], seed: int
) -> None:
    """Give the frozen ``flux`` a float32 LoRA ``adapter`` (trainable), initialised from ``seed``.

    The global RNG is left as it was, so every process, and every run of one config, starts from
    the same LoRA whatever ran before.
    """
    from diffusers.training_utils import cast_training_params
    from peft import LoraConfig

    flux.requires_grad_(False)
    config = LoraConfig(
        r=rank, lora_alpha=alpha, init_lora_weights="gaussian", target_modules=lora_target_regex(target_modules)
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        flux.add_adapter(config, adapter_name=adapter)
    cast_training_params(flux, dtype=torch.float32)


def lora_state(flux: torch.nn.Module, adapter: str) -> dict[str, torch.Tensor]:
    """``adapter``'s tensors under diffusers' names (``transformer_blocks.0.attn.to_q.lora_A.weight``…)."""
    from peft.utils import get_peft_model_state_dict

    return get_peft_model_state_dict(flux, adapter_name=adapter)


def save_lora(flux: torch.nn.Module, folder: Path, adapter: str, *, lora_on: LoraOn = "all") -> Path:
    """``folder/pytorch_lora_weights.safetensors`` in diffusers' format (rank and alpha as metadata),
    and ``folder/seminft_lora.json`` with ``lora_on``."""
    from diffusers import FluxPipeline

    FluxPipeline.save_lora_weights(
        folder,
        transformer_lora_layers={name: tensor.detach().cpu() for name, tensor in lora_state(flux, adapter).items()},
        transformer_lora_adapter_metadata=flux.peft_config[adapter].to_dict(),
    )
    atomic_write_text(folder / TRAINING_FILE, json.dumps({"adapter": adapter, "lora_on": lora_on}) + "\n")
    return folder / LORA_FILE


def read_lora(folder: Path, flux: torch.nn.Module, adapter: str) -> dict[str, torch.Tensor]:
    """A saved LoRA, checked to have exactly the layers and shapes of ``flux``'s ``adapter`` (same base, rank, targets)."""
    from safetensors.torch import load_file

    path = folder / LORA_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: no {LORA_FILE}: not a checkpoint of seminft-train")
    state = {key.removeprefix("transformer."): value for key, value in load_file(path).items()}
    expected = {name: tuple(tensor.shape) for name, tensor in lora_state(flux, adapter).items()}
    found = {name: tuple(tensor.shape) for name, tensor in state.items()}
    differences = [f"{name}: not in this run's LoRA" for name in sorted(set(found) - set(expected))]
    differences += [f"{name}: missing from the file" for name in sorted(set(expected) - set(found))]
    differences += [
        f"{name}: {found[name]} in the file, {expected[name]} here"
        for name in sorted(set(found) & set(expected)) if found[name] != expected[name]
    ]
    if differences:
        config = flux.peft_config[adapter]
        raise LoraMismatchError(
            f"{path} is not a LoRA of this run's model and LoRA settings (rank {config.r}, these target modules): "
            f"{first_few(differences, 3)}"
        )
    return state


def load_lora_state(flux: torch.nn.Module, folder: Path, adapter: str) -> None:
    """Overwrite ``adapter``'s weights in place with the checked LoRA saved in ``folder``."""
    from peft import set_peft_model_state_dict

    incompatible = set_peft_model_state_dict(flux, read_lora(folder, flux, adapter), adapter_name=adapter)
    if getattr(incompatible, "unexpected_keys", None):
        raise LoraMismatchError(f"{folder}: unexpected LoRA keys {incompatible.unexpected_keys[:3]}")


def trained_on(path: Path) -> LoraOn:
    """The ``lora_on`` a LoRA (folder or weights file) was trained with: ``all`` unless its ``seminft_lora.json`` says."""
    record = (path if path.is_dir() else path.parent) / TRAINING_FILE
    if not record.is_file():
        return "all"
    try:
        lora_on = json.loads(record.read_text(encoding="utf-8"))["lora_on"]
    except (ValueError, KeyError, TypeError):
        raise LoraMismatchError(f"{record}: unreadable; it should hold {{\"lora_on\": \"all\" or \"main\"}}") from None
    if lora_on not in ("all", "main"):
        raise LoraMismatchError(f"{record}: lora_on must be 'all' or 'main', got {lora_on!r}")
    return lora_on


def adapter_parameters(flux: torch.nn.Module, adapter: str) -> list[torch.nn.Parameter]:
    """``adapter``'s LoRA weights, in module order (so two adapters' lists pair up tensor by tensor)."""
    return [parameter for name, parameter in flux.named_parameters() if f".{adapter}." in f"{name}."]


def set_trainable(flux: torch.nn.Module, adapter: str | None) -> None:
    """Only ``adapter``'s LoRA weights require gradients (None: nothing does).

    peft marks an adapter trainable whenever it is activated (``set_adapters``), and the others
    frozen: call this after every switch, or a frozen LoRA starts to learn.
    """
    for name, parameter in flux.named_parameters():
        parameter.requires_grad_(adapter is not None and "lora_" in name and f".{adapter}." in f"{name}.")
