"""Training configs: dataclasses that round-trip through YAML, strictly checked.

A config file sets any subset of the fields (``configs/sft.yaml`` lists them all); a key
the dataclass lacks, a value of the wrong type or out of its range (each class's ``LIMITS``)
is an error naming the file, the key, the value and what is allowed, so a typo never
silently trains with a default and a bad value never gets as far as the loop. Command-line
flags go on top with `Overridable.override`, under the same rules. What needs several
values at once (a dataset and an out folder to train) is `Overridable.check_runnable`.
"""

from __future__ import annotations

import os
import types
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, ClassVar, Literal, Union, get_args, get_origin, get_type_hints

import yaml

from seminft_bench.fileio import atomic_write_text

DEFAULT_BASE = "black-forest-labs/FLUX.1-dev"

LORA_TARGET_MODULES = (
    # double-stream blocks (`transformer_blocks`): image and text attention, both feed-forwards
    "attn.to_q",
    "attn.to_k",
    "attn.to_v",
    "attn.to_out.0",
    "attn.add_q_proj",
    "attn.add_k_proj",
    "attn.add_v_proj",
    "attn.to_add_out",
    "ff.net.0.proj",
    "ff.net.2",
    "ff_context.net.0.proj",
    "ff_context.net.2",
    # single-stream blocks (`single_transformer_blocks`): attn.to_q/k/v as above, then the MLP and the fused output
    "proj_mlp",
    "proj_out",
)
"""Linear layers given LoRA, as paths inside a FLUX block (diffusers' `FluxTransformer2DModel` names).

Use them through `components.lora_target_regex`, which keeps them inside the blocks: the
model's own final ``proj_out`` is not adapted."""


class ConfigError(ValueError):
    """A config file or flag that does not describe a valid config; the message names the file and the key."""


@dataclass(frozen=True)
class Range:
    """The values a number may take: ``low`` (excluded when ``open_low``) up to ``high``; None is unbounded."""

    low: float | None = None
    high: float | None = None
    open_low: bool = False

    def admits(self, value: float) -> bool:
        above = self.low is None or (value > self.low if self.open_low else value >= self.low)
        return above and (self.high is None or value <= self.high)

    def __str__(self) -> str:
        if self.high is None:
            return f"{'>' if self.open_low else '≥'} {self.low:g}"
        if self.low is None:
            return f"≤ {self.high:g}"
        return f"in {'(' if self.open_low else '['}{self.low:g}, {self.high:g}]"


COUNT = Range(1)
"""A count or an interval in steps: at least 1."""
NON_NEGATIVE = Range(0)
POSITIVE = Range(0, open_low=True)
FRACTION = Range(0, 1)


@dataclass
class LogitNormal:
    """Training timesteps drawn as sigmoid(N(mean, std)), SD3's logit-normal density (Esser et al. 2024)."""

    mean: float = 0.0
    std: float = 1.0

    LIMITS: ClassVar[dict[str, Range]] = {"std": POSITIVE}


class Overridable:
    """Configs take command-line flags on top of their file values."""

    LIMITS: ClassVar[dict[str, Range]] = {}
    """The range of each numeric field that has one (a field that may be null is checked when it is not)."""

    def override(self, source: str = "override", names: dict[str, str] | None = None, **flags: Any):
        """A copy with ``flags`` set, checked like file values; a flag that is None was not given: no change.

        Errors name ``source`` and each field as ``names`` has it (``{"steps": "--max-steps"}``)."""
        given = {key: value for key, value in flags.items() if value is not None}
        return replace(self, **_checked_fields(type(self), given, source, names=names or {}))

    def check_runnable(self) -> None:
        """Raise a `ConfigError` when the settings cannot run together (each value alone was checked already)."""


@dataclass
class SFTConfig(Overridable):
    """The cold-start SFT stage (paper §3.1): one LoRA on FLUX.1-dev, rectified flow on the quadruplets.

    Only ``steps`` comes from the paper (§3.1 and §4.1: 10,000 iterations). The rest are
    the usual choices for FLUX LoRAs (diffusers' FLUX LoRA scripts, OminiControl), since
    the paper does not give them.
    """

    dataset: str | None = None
    """Cold-start dataset folder (`seminft-data build-coldstart`); required to train."""
    out: str | None = None
    """Run folder: checkpoints, logs and the final LoRA; required to train."""
    base: str = DEFAULT_BASE
    """Base model: hub id in the local Hugging Face cache, a folder, or ``"tiny:SEED"``."""
    prompt: str | None = None
    """The task description for every sample; None uses the dataset's ``prompt`` column."""

    steps: int = 10_000
    learning_rate: float = 1e-4
    batch_size: int = 1
    """Per process; ``accelerate launch`` multiplies it by the number of GPUs."""
    max_grad_norm: float = 1.0
    optimizer: Literal["adamw", "adamw8bit"] = "adamw"
    seed: int = 0

    lora_rank: int = 16
    lora_alpha: int = 16
    lora_target_modules: tuple[str, ...] = LORA_TARGET_MODULES
    lora_on: Literal["all", "main"] = "all"
    """Tokens the LoRA acts on: every branch, or only the main one (text + noisy latent)."""

    resolution: int = 512
    """Side of the square whose area each training image is resized to (aspect ratio kept)."""
    weighting: LogitNormal = field(default_factory=LogitNormal)
    condition_timestep: float | None = 0.0
    """Timestep of the reference and source branches (0, as OminiControl); None gives them the noisy one (ablation)."""
    guidance_scale: float = 3.5
    """FLUX.1-dev's distilled-guidance input during training, as diffusers' FLUX LoRA script sets it."""

    mixed_precision: Literal["no", "bf16"] = "bf16"
    gradient_checkpointing: bool = True
    quantize_base: Literal["nf4", "float8"] | None = None
    """Store the frozen base's weights as NF4 (bitsandbytes, CUDA) or float8 (torchao, weight-only) to fit
    24–48 GB cards; None keeps them in bf16. A tiny base must be saved to a folder first."""

    log_every: int = 10
    validate_every: int = 500
    checkpoint_every: int = 1000

    LIMITS: ClassVar[dict[str, Range]] = {
        "steps": NON_NEGATIVE, "learning_rate": POSITIVE, "batch_size": COUNT, "max_grad_norm": POSITIVE,
        "seed": NON_NEGATIVE, "lora_rank": COUNT, "lora_alpha": COUNT, "resolution": Range(16),
        "condition_timestep": FRACTION, "guidance_scale": NON_NEGATIVE,
        "log_every": COUNT, "validate_every": COUNT, "checkpoint_every": COUNT,
    }  # fmt: skip

    @property
    def quantises(self) -> bool:
        """Whether the run needs bitsandbytes or torchao (`quantlibs`)."""
        return self.quantize_base is not None or self.optimizer == "adamw8bit"

    def check_runnable(self) -> None:
        if not self.dataset or not self.out:
            raise ConfigError("an SFT run needs both dataset and out")
        if self.lora_on == "main" and self.condition_timestep is None:
            raise ConfigError("lora_on: main needs a fixed condition_timestep (the conditions run once, without the LoRA)")


@dataclass
class NFTConfig(Overridable):
    """The RL stage (paper §3.4): DiffusionNFT on unpaired (source, reference) pairs, a second LoRA ``rl``
    over the frozen cold-start one.

    From the paper: G = 9 (online + offline) per group, T = 6 rollout steps, Qwen3-VL-8B reward.
    From DiffusionNFT's reference code (``config/nft.py``, ``scripts/train_nft_sd3.py``): β = 1, the
    adaptive x0-space weighting and the policy term's scale 5 / β, the old policy's decay ramp (0.001 per
    optimizer step up to 0.5), the samples per optimizer step, AdamW's settings, the learning rate and
    the LoRA's rank and alpha, training at every rollout noise level. ``configs/nft.yaml`` gives each
    default's source, and says where and why ours differ.
    """

    dataset: str | None = None
    """RL pairs (`seminft-data build-rl`); a cold-start set works too (the "w/o realistic dataset" row)."""
    out: str | None = None
    coldstart_lora: str | None = None
    """The frozen cold-start LoRA (SFT's output folder); None with ``init: base``."""
    init: Literal["coldstart", "base"] = "coldstart"
    """``base``: no cold-start LoRA (Table 3's "w/o cold-start")."""
    base: str = DEFAULT_BASE
    prompt: str | None = None
    """The task description for every pair; None uses the dataset's ``prompt`` column."""

    steps: int = 300
    """Optimizer steps (each: rollouts, rewards, the loss, one AdamW step, the soft update); 0 saves the
    untouched LoRA ("w/o RL")."""
    groups_per_step: int = 128
    """(source, reference) pairs per optimizer step over all processes, each with its own group; their
    gradients accumulate into one update. 128 groups of G = 9 are 1,152 samples per update, the reference's
    48 prompts × 24 images; on the paper's 2 GPUs, 64 groups per GPU."""
    group_online: int = 6
    group_offline: int = 3
    offline_samples: str | None = None
    """The anchors' file (`rewards.load_offline_samples`); None trains on online samples only ("w/o offline")."""
    rollout_steps: int = 6
    guidance_scale: float = 3.5
    micro_batch: int | None = None
    """Members per forward and backward pass of the loss; None trains a group's online samples in one batch.
    Lower it to fit memory: the loss is the same weighted sum (only the order of the noise draws changes)."""
    reward: Literal["vlm", "color-stats"] = "vlm"
    reward_judge: str = "qwen3-vl-8b"
    """The VLM reward's judge name (judge registry or ``reward_config``)."""
    reward_config: str | None = None
    reward_base_url: str | None = None
    """An OpenAI-compatible server (vLLM, SGLang) serving the reward model; None runs it locally."""

    beta: float = 1.0
    adaptive_weighting: bool = True
    loss_scale: float = 5.0
    """The policy term is multiplied by loss_scale / β: the reference's adv_clip_max (5) over its β. Under AdamW a
    constant factor changes only how often ``max_grad_norm`` clips."""
    kl_weight: float = 0.0
    decay_rate: float = 0.001
    decay_max: float = 0.5
    learning_rate: float = 3e-4
    max_grad_norm: float = 1.0
    seed: int = 0

    lora_rank: int = 32
    lora_alpha: int = 64
    lora_target_modules: tuple[str, ...] = LORA_TARGET_MODULES
    lora_on: Literal["all", "main"] = "all"

    resolution: int = 512
    condition_timestep: float | None = 0.0
    mixed_precision: Literal["no", "bf16"] = "bf16"
    gradient_checkpointing: bool = True

    log_every: int = 1
    validate_every: int = 50
    checkpoint_every: int = 50

    LIMITS: ClassVar[dict[str, Range]] = {
        "steps": NON_NEGATIVE, "groups_per_step": COUNT, "group_online": Range(2), "group_offline": NON_NEGATIVE,
        "rollout_steps": COUNT, "guidance_scale": NON_NEGATIVE, "micro_batch": COUNT, "beta": POSITIVE,
        "loss_scale": POSITIVE, "kl_weight": NON_NEGATIVE, "decay_rate": NON_NEGATIVE, "decay_max": FRACTION,
        "learning_rate": POSITIVE, "max_grad_norm": POSITIVE, "seed": NON_NEGATIVE, "lora_rank": COUNT,
        "lora_alpha": COUNT, "resolution": Range(16), "condition_timestep": FRACTION,
        "log_every": COUNT, "validate_every": COUNT, "checkpoint_every": COUNT,
    }  # fmt: skip

    def check_runnable(self) -> None:
        if not self.dataset or not self.out:
            raise ConfigError("an NFT run needs both dataset and out")
        if self.init == "coldstart" and not self.coldstart_lora:
            raise ConfigError("an NFT run needs coldstart_lora (the SFT run's folder), or init: base to train without it")
        if self.condition_timestep is None:
            raise ConfigError("NFT runs on the condition cache: condition_timestep must be a number (0 as in SFT), not null")


ABLATION_ROWS = ("seminft", "w-o-coldstart", "w-o-rl", "w-o-realistic", "w-o-offline")
"""Table 3's rows, in its order (`seminft_bench.bench.ablations.ROWS` says what each changes)."""


@dataclass
class AblationsConfig(Overridable):
    """Table 3 (paper §4.4): the cold-start LoRA trained once, an NFT run per row, and every row benchmarked
    as ``ours:ROW`` on one evaluation set, in one report."""

    out: str | None = None
    """Folder of the runs (``sft/``, one folder per row) and of the benchmark (``bench/``); required."""
    sft: str | None = None
    """The SFT config file (`configs/sft.yaml`; its dataset is the cold-start set); required."""
    nft: str | None = None
    """The NFT config file (`configs/nft.yaml`; its dataset the RL pairs, with the offline anchors); required."""
    rows: tuple[str, ...] = ABLATION_ROWS
    evaluation: str = "demo"
    """The set every row is compared on (``seminft-bench run --dataset``: a built set's folder, pst50-…)."""
    split: str = "test"
    limit: int | None = None
    judges: tuple[str, ...] = ("gpt-4o", "qwen3-vl-32b")
    """Table 3's VLM columns (GPT-4o, Qwen3-VL); the reward column is ``reward``."""
    reward: str | None = "qwen3-vl-8b"
    metrics: tuple[str, ...] = ("dino_local", "success", "color", "structure")
    dino_model: str | None = None
    """None: the benchmark's DINO ViT-B/16."""
    inference_steps: int = 28
    seed: int = 0

    LIMITS: ClassVar[dict[str, Range]] = {"limit": COUNT, "inference_steps": COUNT, "seed": NON_NEGATIVE}


def load_config(path: str | os.PathLike, kind: type = SFTConfig):
    """The config (an ``SFTConfig``, or ``kind``) in the YAML file at ``path``: defaults for the keys it leaves out."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise ConfigError(f"{path}: cannot read config: {error.strerror or error}") from error
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from error
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config is a mapping of keys to values, got {type(data).__name__}")
    return kind(**_checked_fields(kind, data, str(path)))


def save_config(config, path: str | os.PathLike) -> Path:
    """Write ``config`` as YAML (every field, in declaration order) that `load_config` reads back equal."""
    data = _plain(asdict(config))
    return atomic_write_text(path, yaml.safe_dump(data, sort_keys=False, allow_unicode=True))


def _plain(value: Any) -> Any:
    """Tuples as lists, recursively: YAML's safe dumper knows no tuples."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


def _checked_fields(
    cls: type, data: dict, source: str, prefix: str = "", names: dict[str, str] | None = None
) -> dict[str, Any]:
    """``data`` as constructor arguments of the dataclass ``cls``, each value checked against its annotation and
    its range in ``cls.LIMITS``; errors call a key as ``names`` has it, else by its (dotted) name."""
    hints = get_type_hints(cls)
    known = [f.name for f in fields(cls)]
    limits = getattr(cls, "LIMITS", {})
    checked = {}
    for key, value in data.items():
        name = (names or {}).get(key, f"{prefix}{key}")
        if key not in known:
            raise ConfigError(f"{source}: unknown key {name!r}; known keys: {', '.join(prefix + k for k in known)}")
        checked[key] = _checked(value, hints[key], source, name)
        if key in limits and checked[key] is not None and not limits[key].admits(checked[key]):
            raise ConfigError(f"{source}: {name} must be {limits[key]}, got {value!r}")
    return checked


def _checked(value: Any, hint: Any, source: str, name: str) -> Any:
    """``value`` converted to the type ``hint`` describes, or a `ConfigError`."""
    origin, args = get_origin(hint), get_args(hint)
    if origin in (Union, types.UnionType):  # only `X | None` is used
        if value is None:
            return None
        (inner,) = [arg for arg in args if arg is not type(None)]
        try:
            return _checked(value, inner, source, name)
        except ConfigError:
            raise ConfigError(f"{source}: {name} must be {_describe(inner)} or null, got {value!r}") from None
    if origin is Literal:
        if isinstance(value, str) and value in args:
            return value
    elif origin is tuple:
        if isinstance(value, (list, tuple)):
            return tuple(_checked(item, args[0], source, f"{name}[{i}]") for i, item in enumerate(value))
    elif is_dataclass(hint):
        if isinstance(value, hint):
            return value
        if isinstance(value, dict):
            return hint(**_checked_fields(hint, value, source, prefix=f"{name}."))
    elif hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # PyYAML reads 1e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif hint is str:
        if isinstance(value, str):
            return value
    raise ConfigError(f"{source}: {name} must be {_describe(hint)}, got {value!r}")


def _describe(hint: Any) -> str:
    origin, args = get_origin(hint), get_args(hint)
    if origin is Literal:
        return "one of " + ", ".join(repr(arg) for arg in args)
    if origin is tuple:
        return f"a list, each item {_describe(args[0])}"
    if is_dataclass(hint):
        return f"a mapping with keys {', '.join(f.name for f in fields(hint))}"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}[hint]
