"""LoRA adapters on the FLUX transformer: add one, save it with the record of how it runs, read both back checked.

Both training stages use these: SFT trains ``coldstart``, NFT trains ``rl`` (with ``old``, its
slow copy) over the frozen ``coldstart``. A LoRA only means what it was trained to mean under the
settings it was trained with: its scale (alpha / rank), the branches it acts on, the conditions'
timestep, the working pixel area and resize rule, the prompt and the base model. `LoraRecord` holds
them. `save_lora` writes it twice: inside the safetensors header (beside diffusers' own
``lora_adapter_metadata``, so the file carries it wherever it goes) and as ``seminft_lora.json``
beside the file (for people and tools). Every loader restores it (`read_record`), and stacked
LoRAs whose records disagree are refused (`check_compatible`). `lora_file` checks first that a path holds a
whole LoRA file, so a wrong path or a cut file fails in one line that names it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Literal

import torch

from seminft_bench.errors import first_few
from seminft_bench.fileio import atomic_write_bytes, atomic_write_text
from seminft_bench.model.components import lora_target_regex

LORA_FILE = "pytorch_lora_weights.safetensors"
RECORD_FILE = "seminft_lora.json"
RECORD_KEY = "seminft_lora"
"""The safetensors header entry that holds the record (diffusers' own entry is ``lora_adapter_metadata``)."""
LoraOn = Literal["all", "main"]
TUNER = "_seminft_lora_tuner"
"""The transformer's attribute holding its peft LoRA tuner (`inject_lora`)."""


class LoraMismatchError(ValueError):
    """A LoRA that does not fit this transformer, this run's LoRA settings, or the LoRAs stacked with it."""


class LoraFileError(ValueError):
    """A LoRA path that holds no whole LoRA file: nothing there, a folder of something else, a cut or corrupt file."""


@dataclass(frozen=True)
class LoraRecord:
    """Everything that decides how a LoRA runs, saved with it and restored wherever it is loaded."""

    lora_on: LoraOn
    """The tokens it acts on: every branch, or the main one (its condition pass runs without it)."""
    condition_timestep: float | None
    """The t of the reference and source branches; None: the noisy branch's t."""
    pixel_area: int
    """The working area every image is resized to (aspect kept)."""
    resize: str
    """The rule that gets an image to that area (`pipeline.RESIZE_RULE`)."""
    prompt: str | None
    """The task description; None when it was trained on per-sample prompts (inference then needs one)."""
    prompt_key: str | None
    """The cache key of the prompt's embeddings: the text and the text encoders' identity."""
    base: str
    """The base model it was trained on, as named (a hub id, a folder or ``tiny:SEED``)."""
    base_identity: str
    """A hash of the base transformer's config (`components.base_identity`): the same model wherever it lies."""
    kind: str = ""
    """The training stage that made it (``sft``, ``nft``)."""
    step: int = 0
    """Optimizer steps taken when it was saved."""
    peft: dict = field(default_factory=dict)
    """rank ``r``, ``lora_alpha`` and ``target_modules``, as peft's `LoraConfig` names them (filled on save)."""

    SHARED = ("base_identity", "condition_timestep", "pixel_area", "resize", "prompt")
    """The settings that LoRAs stacked on one pipeline must share (``lora_on`` and the rank may differ)."""

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str, source: str) -> LoraRecord:
        try:
            data = json.loads(text)
            known = {f.name for f in fields(cls)}
            record = cls(**{key: value for key, value in data.items() if key in known})
        except (ValueError, TypeError) as error:
            raise LoraMismatchError(f"{source}: unreadable LoRA record ({error})") from None
        if record.lora_on not in ("all", "main"):
            raise LoraMismatchError(f"{source}: lora_on must be 'all' or 'main', got {record.lora_on!r}")
        return record


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
        inject_lora(flux, adapter, config)
    cast_training_params(flux, dtype=torch.float32)


def inject_lora(flux: torch.nn.Module, adapter: str, config, state_dict: dict | None = None) -> None:
    """Add the LoRA layers of ``adapter`` (a peft `LoraConfig`; ``state_dict``'s keys pick the layers when given) and
    make it the one active adapter: the one way every LoRA joins a transformer, trained here or loaded.

    The first adapter builds peft's LoRA tuner of the model; later ones join through that same tuner, as peft's
    own `PeftModel.add_adapter` adds them. (diffusers' `add_adapter` and `load_lora_adapter` build a new tuner
    for each adapter, which finds the model's adapters and cautions that there will be several.)
    """
    from peft.tuners.lora import LoraModel

    tuner = flux.__dict__.get(TUNER)
    if tuner is None:
        tuner = LoraModel(flux, config, adapter, state_dict=state_dict)
        object.__setattr__(flux, TUNER, tuner)  # an attribute, not a submodule: the tuner holds the model
    else:
        if adapter in tuner.peft_config:
            raise ValueError(f"this transformer already has a LoRA adapter named {adapter!r}")
        tuner.peft_config[adapter] = config
        tuner.active_adapter = adapter  # active alone once injected, as a first adapter is
        tuner.inject_adapter(flux, adapter, state_dict=state_dict)
    flux._hf_peft_config_loaded = True  # diffusers' adapter methods (set_adapters, disable_lora…) ask for it


def transformer_part(entries: Mapping | None) -> dict:
    """The transformer's entries of a LoRA file's tensors, alphas or config, without their ``transformer.`` prefix."""
    return {key.removeprefix("transformer."): value for key, value in (entries or {}).items() if key.startswith("transformer.")}


def loaded_lora_config(state: Mapping[str, torch.Tensor], alphas: Mapping | None, metadata: Mapping | None):
    """peft's `LoraConfig` of a loaded LoRA (``state`` as `transformer_part` gives it), as diffusers' loader makes it:
    the config saved in the file, else the ranks of its tensors with its (kohya-style) alphas, or alpha = rank."""
    from diffusers.utils.peft_utils import get_peft_kwargs
    from peft import LoraConfig

    if metadata:
        return LoraConfig(**transformer_part(metadata))
    ranks = {f"^{key}": tensor.shape[1] for key, tensor in state.items() if "lora_B" in key and tensor.ndim > 1}
    return LoraConfig(**get_peft_kwargs(ranks, network_alpha_dict=transformer_part(alphas) or None, peft_state_dict=state))


def lora_state(flux: torch.nn.Module, adapter: str) -> dict[str, torch.Tensor]:
    """``adapter``'s tensors under diffusers' names (``transformer_blocks.0.attn.to_q.lora_A.weight``…)."""
    from peft.utils import get_peft_model_state_dict

    return get_peft_model_state_dict(flux, adapter_name=adapter)


def save_lora(flux: torch.nn.Module, folder: Path, adapter: str, record: LoraRecord) -> Path:
    """``folder/pytorch_lora_weights.safetensors`` in diffusers' format, written atomically, with ``record`` (its
    peft part filled from ``adapter``'s config) in the header and in ``folder/seminft_lora.json``."""
    from diffusers import FluxPipeline
    from diffusers.loaders.lora_base import LORA_ADAPTER_METADATA_KEY
    from safetensors.torch import save

    peft = flux.peft_config[adapter].to_dict()
    peft = {key: sorted(value) if isinstance(value, set) else value for key, value in peft.items()}
    record = replace(record, peft={key: peft[key] for key in ("r", "lora_alpha", "target_modules")})
    header = {
        "format": "pt",
        # what diffusers' own save writes: peft's config under the transformer's prefix
        LORA_ADAPTER_METADATA_KEY: json.dumps({f"transformer.{k}": v for k, v in peft.items()}, indent=2, sort_keys=True),
        RECORD_KEY: record.to_json(),
    }

    def write(tensors: dict[str, torch.Tensor], filename: str) -> None:
        atomic_write_bytes(filename, save({k: v.contiguous() for k, v in tensors.items()}, metadata=header))

    FluxPipeline.save_lora_weights(
        folder,
        transformer_lora_layers={name: tensor.detach().cpu() for name, tensor in lora_state(flux, adapter).items()},
        save_function=write,
    )
    atomic_write_text(folder / RECORD_FILE, json.dumps(asdict(record), indent=2, sort_keys=True) + "\n")
    return folder / LORA_FILE


def weights_file(path: str | Path) -> Path:
    """The LoRA file of ``path`` (a folder holding ``pytorch_lora_weights.safetensors``, or that file)."""
    path = Path(path)
    return path / LORA_FILE if path.is_dir() else path


def lora_file(path: str | Path) -> Path:
    """The LoRA file at ``path`` (a folder holding ``pytorch_lora_weights.safetensors``, or that file), checked whole.

    Loaders and the command lines call this before anything else: diffusers takes a missing path for a hub
    id and fails without naming it, and a file cut by a kill or a partial copy fails deep inside safetensors.
    Raises `LoraFileError` naming the path and what is missing or broken.
    """
    path = Path(path)
    file = weights_file(path)
    if not path.exists():
        raise LoraFileError(f"{path}: no such LoRA file or folder")
    if not file.is_file():
        raise LoraFileError(f"{path}: a folder without {LORA_FILE} (not a LoRA run's folder)")
    problem = _safetensors_problem(file)
    if problem:
        raise LoraFileError(f"{file}: not a readable safetensors file (truncated or corrupt: {problem})")
    return file


def _safetensors_problem(file: Path) -> str | None:
    """What makes ``file`` no whole safetensors file, or None.

    The header's length and the tensors' data offsets are checked against the file's size: a file cut
    anywhere, in its header or in its tensor data, is caught without reading the tensors.
    """
    size = file.stat().st_size
    with open(file, "rb") as handle:
        start = handle.read(8)
        if len(start) < 8:
            return f"{size} bytes, too short for a safetensors header"
        length = int.from_bytes(start, "little")
        if 8 + length > size:
            return f"{size} bytes, cut inside its {length}-byte header"
        try:
            header = json.loads(handle.read(length))
            ends = [entry["data_offsets"][1] for name, entry in header.items() if name != "__metadata__"]
        except (ValueError, TypeError, KeyError, IndexError, AttributeError) as error:
            return f"unreadable header ({error})"
    expected = 8 + length + max(ends, default=0)
    return None if size == expected else f"{size} bytes, its header describes {expected}"


def lora_fingerprint(path: str | Path) -> str:
    """SHA-256 of what the LoRA at ``path`` holds (its metadata, and each tensor's name, dtype, shape and values),
    not of its bytes: safetensors writes the header's metadata in a per-process order, so one LoRA saved twice
    differs byte for byte while holding the same."""
    from safetensors import safe_open

    digest = hashlib.sha256()
    with safe_open(lora_file(path), framework="pt") as handle:
        digest.update(json.dumps(handle.metadata() or {}, sort_keys=True).encode())
        for name in sorted(handle.keys()):
            tensor = handle.get_tensor(name).contiguous()
            digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
            digest.update(tensor.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def read_record(path: str | Path) -> LoraRecord | None:
    """The record of the LoRA at ``path`` (checked by `lora_file`): from its safetensors header, else from
    ``seminft_lora.json`` beside it (files of older versions, which hold ``lora_on`` only, give None and say so).
    None for a LoRA made elsewhere."""
    from safetensors import SafetensorError, safe_open

    file = lora_file(path)
    try:
        with safe_open(file, framework="pt") as handle:
            header = handle.metadata() or {}
    except (OSError, SafetensorError) as error:
        raise LoraFileError(f"{file}: not a readable safetensors file ({error})") from None
    if RECORD_KEY in header:
        return LoraRecord.from_json(header[RECORD_KEY], str(file))
    beside = file.parent / RECORD_FILE
    if not beside.is_file():
        return None
    text = beside.read_text(encoding="utf-8")
    if '"base_identity"' not in text:
        raise LoraMismatchError(
            f"{beside}: a LoRA record of an older seminft-train, without the settings it was trained under "
            "(condition timestep, working area, prompt, base); retrain it, or remove that file to load it as a plain LoRA"
        )
    return LoraRecord.from_json(text, str(beside))


def check_compatible(records: Sequence[tuple[str, LoraRecord]]) -> None:
    """Refuse ``(label, record)`` pairs that disagree on a `LoraRecord.SHARED` setting, naming both and the setting."""
    for (label, record), (other_label, other) in zip(records, records[1:]):
        for name in LoraRecord.SHARED:
            if getattr(record, name) != getattr(other, name):
                raise LoraMismatchError(
                    f"{label} and {other_label} differ in {name} ({getattr(record, name)!r} and "
                    f"{getattr(other, name)!r}): a LoRA runs only under the settings it was trained with"
                )


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


def adapter_parameters(flux: torch.nn.Module, adapter: str) -> list[torch.nn.Parameter]:
    """``adapter``'s LoRA weights, in module order (so two adapters' lists pair up tensor by tensor)."""
    return [parameter for name, parameter in flux.named_parameters() if f".{adapter}." in f"{name}."]


def set_trainable(flux: torch.nn.Module, adapter: str | None) -> None:
    """Only ``adapter``'s LoRA weights require gradients (None: nothing does)."""
    for name, parameter in flux.named_parameters():
        parameter.requires_grad_(adapter is not None and "lora_" in name and f".{adapter}." in f"{name}.")
