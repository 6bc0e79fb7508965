"""`seminft-train ablations`: Table 3's rows trained on the tiny model and benchmarked together, end to end."""

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from safetensors.torch import load_file
from test_model_nft_loop import write_offline, write_pairs
from test_model_sft import tiny_config, write_coldstart

from seminft_bench.bench.ablations import ROWS, run_ablations
from seminft_bench.model.config import AblationsConfig, ConfigError, NFTConfig, save_config
from seminft_bench.model.lora import LORA_FILE
from seminft_bench.model.training import RunFolderError


def configs(tmp_path, **nft_overrides) -> AblationsConfig:
    coldstart = write_coldstart(tmp_path / "coldstart") if not (tmp_path / "coldstart").exists() else tmp_path / "coldstart"
    pairs = write_pairs(tmp_path / "pairs") if not (tmp_path / "pairs").exists() else tmp_path / "pairs"
    offline = write_offline(tmp_path / "offline", pairs)
    sft_file = save_config(tiny_config(coldstart, tmp_path / "unused", steps=4), tmp_path / "sft.yaml")
    nft = NFTConfig().override(**{**dict(
        dataset=str(pairs), offline_samples=str(offline), steps=2, groups_per_step=1, group_online=3, group_offline=2, rollout_steps=2,
        reward="color-stats", lora_rank=4, lora_alpha=4, resolution=48, learning_rate=1e-2, validate_every=1000,
        checkpoint_every=1000), **nft_overrides})  # fmt: skip
    nft_file = save_config(nft, tmp_path / "nft.yaml")
    return AblationsConfig(
        out=str(tmp_path / "ablations"), sft=str(sft_file), nft=str(nft_file), evaluation="demo", limit=2, judges=(),
        reward=None, metrics=("dino_local", "color", "structure"), inference_steps=2,
    )


@pytest.mark.slow
def test_every_table_3_row_trains_and_is_benchmarked_on_the_same_samples(tmp_path, tiny_dino):
    config = configs(tmp_path)
    config = AblationsConfig(**{**config.__dict__, "dino_model": tiny_dino})
    logged = []
    summary = run_ablations(config, tiny=True, cache_dir=tmp_path / "cache", log=logged.append)
    assert summary.failed == 0 and summary.samples == 2
    out = tmp_path / "ablations"

    records = [json.loads(line) for line in (out / "bench" / "results.jsonl").read_text().splitlines()]
    methods = {f"ours:{row}" for row in ROWS}
    assert {r["method"] for r in records} == methods
    by_method = {m: sorted(r["sample"] for r in records if r["method"] == m) for m in methods}
    assert len({tuple(samples) for samples in by_method.values()}) == 1  # every row on the same samples
    assert all(-1 <= r["metrics"]["dino_local"] <= 1 and np.isfinite(r["metrics"]["color"]) for r in records)

    def untouched(row):  # the rl LoRA still at its zero initialisation
        return all(bool((t == 0).all()) for k, t in load_file(out / row / LORA_FILE).items() if "lora_B" in k)

    assert untouched("w-o-rl") and not untouched("seminft") and not untouched("w-o-offline")
    assert yaml.safe_load((out / "w-o-coldstart" / "ours.yaml").read_text())["lora"] == [str(out / "w-o-coldstart")]
    assert yaml.safe_load((out / "seminft" / "ours.yaml").read_text())["lora"] == [str(out / "sft"), str(out / "seminft")]
    nft_settings = {row: (out / row / "config.yaml").read_text() for row in ROWS}
    assert "init: base" in nft_settings["w-o-coldstart"] and "offline_samples: null" in nft_settings["w-o-offline"]
    assert str(tmp_path / "coldstart") in nft_settings["w-o-realistic"]
    command = next(line for line in logged if line.startswith("the same benchmark by hand"))
    assert "--ours-variant w-o-rl=" in command and "--metrics dino_local,color,structure" in command
    assert "DINO local" in (out / "bench" / "report.md").read_text()

    # A row folder trained under other settings is refused, not mixed into the table.
    changed = configs(tmp_path, learning_rate=5e-3)
    changed = AblationsConfig(**{**changed.__dict__, "dino_model": tiny_dino})
    with pytest.raises(RunFolderError, match="learning_rate"):
        run_ablations(changed, tiny=True, cache_dir=tmp_path / "cache", log=logged.append)


def test_rows_that_would_coincide_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="offline_samples"):
        run_ablations(configs(tmp_path, offline_samples=None), tiny=True, cache_dir=tmp_path / "cache", log=lambda _: None)


def test_a_second_ablations_job_on_one_folder_is_refused(tmp_path):
    from seminft_bench.fileio import FolderLock, FolderLocked

    config = configs(tmp_path)
    with FolderLock(config.out, job="test"), pytest.raises(FolderLocked, match="being written by another"):
        run_ablations(config, tiny=True, cache_dir=tmp_path / "cache", log=lambda _: None)
    assert sorted(path.name for path in Path(config.out).iterdir()) == [".lock"]
