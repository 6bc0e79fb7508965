"""SFT config: paper defaults, strict YAML loading, round trip, CLI overrides, the example file."""

from dataclasses import fields
from pathlib import Path

import pytest
import yaml

from seminft_bench.model.config import ConfigError, LogitNormal, SFTConfig, load_config, save_config

EXAMPLE = Path(__file__).resolve().parents[1] / "configs" / "sft.yaml"


def _write(tmp_path, text: str) -> Path:
    path = tmp_path / "sft.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_follow_the_paper_where_it_gives_them():
    config = SFTConfig()
    assert config.steps == 10_000  # §3.1, §4.1
    assert config.base == "black-forest-labs/FLUX.1-dev"  # §4.1
    assert config.condition_timestep == 0.0
    assert config.weighting == LogitNormal(mean=0.0, std=1.0)
    assert "single_transformer_blocks" not in " ".join(config.lora_target_modules)  # paths inside a block


def test_yaml_round_trip_keeps_every_field(tmp_path):
    config = SFTConfig(
        dataset="data/cs",
        out="runs/x",
        base="tiny:2",
        prompt="grade it",
        learning_rate=3e-5,
        lora_target_modules=("attn.to_q", "proj_out"),
        lora_on="main",
        weighting=LogitNormal(mean=0.5, std=1.5),
        condition_timestep=None,
        quantize_base="nf4",
        gradient_checkpointing=False,
    )
    path = save_config(config, tmp_path / "saved.yaml")
    assert load_config(path) == config
    assert list(yaml.safe_load(path.read_text())) == [f.name for f in fields(SFTConfig)]


def test_example_file_lists_every_option_at_its_default():
    assert set(yaml.safe_load(EXAMPLE.read_text())) == {f.name for f in fields(SFTConfig)}
    assert load_config(EXAMPLE) == SFTConfig(dataset="data/coldstart", out="runs/sft")


def test_missing_keys_take_defaults_and_an_empty_file_is_the_default(tmp_path):
    assert load_config(_write(tmp_path, "steps: 20\n")) == SFTConfig(steps=20)
    assert load_config(_write(tmp_path, "# nothing set\n")) == SFTConfig()


def test_unknown_key_names_the_file_and_the_key(tmp_path):
    path = _write(tmp_path, "steps: 10\nlearning_rat: 0.001\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(path) in str(caught.value) and "'learning_rat'" in str(caught.value)
    assert "learning_rate" in str(caught.value)  # the known keys are listed

    with pytest.raises(ConfigError, match=r"unknown key 'weighting\.mu'"):
        load_config(_write(tmp_path, "weighting: {mu: 0.1}\n"))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("steps: ten\n", "steps must be an integer, got 'ten'"),
        ("steps: 1.5\n", "steps must be an integer"),
        ("steps: true\n", "steps must be an integer"),
        ("gradient_checkpointing: 1\n", "gradient_checkpointing must be true or false"),
        ("lora_on: some\n", "lora_on must be one of 'all', 'main'"),
        ("quantize_base: int4\n", "quantize_base must be one of 'nf4', 'float8' or null"),
        ("condition_timestep: zero\n", "condition_timestep must be a number or null"),
        ("lora_target_modules: attn.to_q\n", "lora_target_modules must be a list, each item a string"),
        ("lora_target_modules: [attn.to_q, 3]\n", r"lora_target_modules\[1\] must be a string"),
        ("weighting: 0.5\n", "weighting must be a mapping with keys mean, std"),
        ("weighting: {std: wide}\n", "weighting.std must be a number"),
        ("dataset: [a, b]\n", "dataset must be a string or null"),
    ],
)
def test_wrong_types_name_the_file_and_the_key(tmp_path, text, message):
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError, match=message) as caught:
        load_config(path)
    assert str(path) in str(caught.value)


def test_numbers_yaml_reads_as_text_are_accepted(tmp_path):
    config = load_config(_write(tmp_path, "learning_rate: 1e-4\nmax_grad_norm: 2\n"))
    assert config.learning_rate == 1e-4 and isinstance(config.max_grad_norm, float)


def test_files_that_are_not_configs(tmp_path):
    with pytest.raises(ConfigError, match="mapping"):
        load_config(_write(tmp_path, "- steps\n"))
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(_write(tmp_path, "steps: [1\n"))
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.yaml")


def test_override_sets_checked_values_and_skips_flags_not_given():
    config = SFTConfig(steps=50).override(steps=7, dataset="d", out=None, learning_rate="2e-4", weighting={"std": 2})
    assert config.steps == 7 and config.dataset == "d" and config.out is None
    assert config.learning_rate == 2e-4 and config.weighting == LogitNormal(std=2.0)
    with pytest.raises(ConfigError, match="override: steps must be an integer"):
        SFTConfig().override(steps="many")
    with pytest.raises(ConfigError, match="unknown key 'stepz'"):
        SFTConfig().override(stepz=1)


def test_nft_example_file_lists_every_option_at_its_default_and_the_paper_group():
    from seminft_bench.model.config import NFTConfig

    example = EXAMPLE.with_name("nft.yaml")
    assert set(yaml.safe_load(example.read_text())) == {f.name for f in fields(NFTConfig)}
    config = load_config(example, NFTConfig)
    assert config == NFTConfig(dataset="data/rl", out="runs/nft", coldstart_lora="runs/sft")
    assert config.group_online + config.group_offline == 9 and config.rollout_steps == 6  # §3.4, §4.1
    with pytest.raises(ConfigError, match="unknown key 'group'"):
        NFTConfig().override(group=9)


def test_ablations_example_file_lists_every_option_at_its_default_and_table_3s_rows():
    from seminft_bench.bench.ablations import ROWS
    from seminft_bench.model.config import AblationsConfig

    example = EXAMPLE.with_name("ablations.yaml")
    assert set(yaml.safe_load(example.read_text())) == {f.name for f in fields(AblationsConfig)}
    config = load_config(example, AblationsConfig)
    assert config == AblationsConfig(out="runs/ablations", sft="configs/sft.yaml", nft="configs/nft.yaml")
    assert [ROWS[row].label for row in config.rows] == [
        "SemiNFT", "w/o cold-start stage", "w/o RL stage", "w/o realistic dataset", "w/o offline samples"]  # fmt: skip
