"""Table 3 as one command (paper §4.4): train every ablation row from one config and benchmark them together.

The cold-start LoRA is trained once (``OUT/sft``); each row is then an NFT run (``OUT/ROW``) that
changes one thing, and becomes the method ``ours:ROW`` of one `seminft-bench run` (``OUT/bench``), so
every row is scored on the same samples with the same judges and metrics:

    seminft       SemiNFT: cold-start LoRA + RL on the realistic pairs with offline anchors
    w-o-coldstart the rl LoRA trained and used on the bare base (``init: base``)
    w-o-rl        no RL step (``steps: 0``: the rl LoRA keeps its zero initialisation)
    w-o-realistic RL on the synthetic cold-start pairs instead of the realistic RL pairs
    w-o-offline   RL without the offline anchors

Every stage resumes (a finished run is only re-saved), and a folder trained under another config
is refused rather than mixed into the table.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from seminft_bench.model.config import AblationsConfig, ConfigError, NFTConfig, SFTConfig, load_config

COLDSTART_PAIRS = "<the SFT dataset>"
"""Stands for the cold-start set in a row's NFT changes."""


@dataclass(frozen=True)
class Row:
    label: str
    """Table 3's name for it."""
    nft: dict = field(default_factory=dict)
    """What it changes in the NFT config."""
    with_coldstart: bool = True
    """Whether its pipeline loads the cold-start LoRA under the rl one."""


ROWS: dict[str, Row] = {
    "seminft": Row("SemiNFT"),
    "w-o-coldstart": Row("w/o cold-start stage", {"init": "base", "coldstart_lora": None}, with_coldstart=False),
    "w-o-rl": Row("w/o RL stage", {"steps": 0}),
    "w-o-realistic": Row("w/o realistic dataset", {"dataset": COLDSTART_PAIRS}),
    "w-o-offline": Row("w/o offline samples", {"offline_samples": None}),
}


def run_ablations(
    config: AblationsConfig, *, tiny: bool = False, cache_dir: str | os.PathLike | None = None,
    log: Callable[[str], None] = print,
):
    """Train what is missing, then benchmark every row; returns the benchmark's `RunSummary`."""
    from seminft_bench.fileio import FolderLock

    if not (config.out and config.sft and config.nft):
        raise ConfigError("the ablations config needs out, sft and nft (the two stages' config files)")
    unknown = [row for row in config.rows if row not in ROWS]
    if unknown:
        raise ConfigError(f"unknown ablation rows {unknown}; known: {', '.join(ROWS)}")
    with FolderLock(config.out, job="seminft-train ablations"):
        return _run(config, tiny, cache_dir, log)


def _run(config: AblationsConfig, tiny: bool, cache_dir, log: Callable[[str], None]):
    """`run_ablations` in the folder it owns (each run and the benchmark also lock their own)."""
    from seminft_bench.bench.runner import RunOptions, run_benchmark
    from seminft_bench.model.nft import train_nft
    from seminft_bench.model.sft import train_sft
    from seminft_bench.model.training import base_model, check_settings

    out = Path(config.out)
    sft_config = load_config(config.sft, SFTConfig).override(out=str(out / "sft"))
    base = base_model(sft_config, tiny)
    nft_config = load_config(config.nft, NFTConfig).override(coldstart_lora=str(out / "sft"), base=base)
    if "w-o-offline" in config.rows and not nft_config.offline_samples:
        raise ConfigError(f"{config.nft} sets no offline_samples: the SemiNFT and w/o offline rows would be one run")
    if "w-o-realistic" in config.rows and nft_config.dataset == sft_config.dataset:
        raise ConfigError(f"{config.nft} trains on the cold-start set already: w/o realistic dataset would change nothing")
    for name in config.rows:  # every row's folder, before hours go into the first one
        check_settings(row_config(nft_config, name, sft_config.dataset, out), base, out / name)
    check_settings(sft_config, base, out / "sft")
    log(f"cold-start SFT -> {out / 'sft'}")
    train_sft(sft_config, tiny=tiny, resume="latest", cache_dir=cache_dir)

    method_options = {}
    for name in config.rows:
        row = ROWS[name]
        log(f"{row.label} -> {out / name}")
        train_nft(row_config(nft_config, name, sft_config.dataset, out), tiny=tiny, resume="latest", cache_dir=cache_dir)
        lora = [str(out / "sft")] * row.with_coldstart + [str(out / name)]
        method_options[f"ours:{name}"] = {"base": base, "lora": lora, "steps": config.inference_steps, "seed": config.seed}
        save_ours_options(method_options[f"ours:{name}"], out / name / "ours.yaml")

    options = RunOptions(
        dataset=config.evaluation, methods=list(method_options), judges=list(config.judges), reward=config.reward,
        metrics=list(config.metrics), split=config.split, limit=config.limit, method_options=method_options,
        **({"dino_model": config.dino_model} if config.dino_model else {}),
    )
    log("the same benchmark by hand: " + bench_command(options, out))
    log("rows: " + "; ".join(f"ours:{name} = {ROWS[name].label}" for name in config.rows))
    return run_benchmark(out / "bench", options, log=log)


def row_config(nft_config: NFTConfig, name: str, coldstart_set: str | None, out: Path) -> NFTConfig:
    """The NFT config of the row ``name``, in ``out/name``."""
    changes = {key: coldstart_set if value == COLDSTART_PAIRS else value for key, value in ROWS[name].nft.items()}
    return replace(nft_config, out=str(out / name), **changes)


def save_ours_options(options: dict, path: Path) -> None:
    """An ``--ours-variant`` file for ``seminft-bench run``: the row's pipeline, as YAML."""
    import yaml

    from seminft_bench.fileio import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(options, sort_keys=False))


def bench_command(options, out: Path) -> str:
    """The ``seminft-bench run`` command line that benchmarks the rows as run here."""
    words = ["seminft-bench", "run", "--dataset", options.dataset, "--split", options.split,
             "--method", ",".join(options.methods), "--judges", ",".join(options.judges),
             "--reward", options.reward or "", "--metrics", ",".join(options.metrics),
             "--dino-model", options.dino_model, "--out", str(out / "bench")]  # fmt: skip
    words += ["--limit", str(options.limit)] if options.limit else []
    for method in options.methods:
        words += ["--ours-variant", f"{method.partition(':')[2]}={out / method.partition(':')[2] / 'ours.yaml'}"]
    return shlex.join(words)

