"""Commands print what matters: they import the quantisation libraries only when the run quantises, adapters
join a model without peft's caution about several adapters, and no third-party notice reaches stderr while
every other message of those libraries, and our own, still shows."""

import logging
import re
import subprocess
import sys
import warnings

import pytest
import torch

from seminft_bench.model.components import tiny_components
from seminft_bench.model.lora import add_lora
from seminft_bench.model.pipeline import SemiNFTPipeline
from seminft_bench.quantlibs import LIBRARIES
from seminft_bench.quiet import IMPORT_NOTICES
from test_model_lora_roundtrip import plain_flux
from test_model_nft_loop import write_pairs
from test_model_pipeline import save_random_lora
from test_model_sft import write_coldstart

THIRD_PARTY = re.compile(r"site-packages|bitsandbytes|torchao|peft|_pytree|Enum subclass|kernels-community")
"""What a line of a third-party notice names: its file, its library, or its text."""
PEFT_CAUTION = "Already found a `peft_config` attribute in the model"

RUN_AS_MAIN = """
import atexit, runpy, sys
atexit.register(lambda: print("imported:", *[name for name in {libraries} if sys.modules.get(name) is not None]))
sys.argv = ["seminft-train", *{args}]
runpy.run_module("seminft_bench.cli.train", run_name="__main__")
"""
"""``python -m seminft_bench.cli.train ARGS`` (as ``accelerate launch -m`` runs it), printing at exit which of the
quantisation libraries the process imported."""


def train(*args: str) -> tuple[str, list[str]]:
    """``seminft-train ARGS`` in a fresh process (where the libraries are first imported): its stderr, and the
    quantisation libraries it imported."""
    code = RUN_AS_MAIN.format(libraries=LIBRARIES, args=list(args))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    imported = result.stdout.splitlines()[-1].split()[1:]
    return result.stderr, imported


def third_party_lines(stderr: str) -> list[str]:
    """The lines (tqdm's redrawn ones split at ``\\r``) that come from a third-party library."""
    return [line for line in re.split(r"[\r\n]+", stderr) if THIRD_PARTY.search(line)]


def test_sft_then_nft_over_its_lora_print_no_third_party_notice_and_import_no_quantisation_library(tmp_path):
    coldstart, pairs = write_coldstart(tmp_path / "coldstart"), write_pairs(tmp_path / "pairs")
    common = ["--tiny", "--max-steps", "1", "--resolution", "48", "--cache", str(tmp_path / "cache")]
    sft, sft_imported = train("sft", "--dataset", str(coldstart), "--out", str(tmp_path / "sft"), *common)
    # NFT stacks its rl and old adapters on the loaded cold-start one: peft's caution would show here
    nft, nft_imported = train("nft", "--dataset", str(pairs), "--coldstart-lora", str(tmp_path / "sft"),
                              "--reward", "color-stats", "--groups-per-step", "1", "--out", str(tmp_path / "nft"), *common)  # fmt: skip
    assert third_party_lines(sft) == [] and third_party_lines(nft) == []
    assert sft_imported == [] and nft_imported == []


def test_a_float8_run_imports_torchao_and_still_prints_no_third_party_notice(tiny_flux_folder, tmp_path):
    folder, _ = tiny_flux_folder
    config = tmp_path / "sft.yaml"
    config.write_text(f"base: {folder}\nquantize_base: float8\nmixed_precision: 'no'\nlora_rank: 4\n")
    stderr, imported = train("sft", "--config", str(config), "--dataset", str(write_coldstart(tmp_path / "coldstart")),
                             "--out", str(tmp_path / "sft"), "--max-steps", "1", "--resolution", "32",
                             "--cache", str(tmp_path / "cache"))  # fmt: skip
    assert "torchao" in imported
    assert third_party_lines(stderr) == []


def stacked_warnings(add) -> list[str]:
    """The warnings raised while ``add`` puts three adapters on one tiny transformer."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        add(tiny_components(0).transformer)
    return [str(warning.message) for warning in caught]


def test_stacked_adapters_join_without_peft_caution_where_diffusers_add_adapter_gives_it(tmp_path):
    def ours(flux):
        for seed, name in enumerate(("coldstart", "rl", "old")):
            add_lora(flux, name, rank=2, alpha=4, target_modules=("attn.to_q", "attn.to_k"), seed=seed)

    def diffusers_add_adapter(flux):
        from peft import LoraConfig

        for name in ("coldstart", "rl", "old"):
            flux.add_adapter(LoraConfig(r=2, lora_alpha=4, target_modules=["to_q", "to_k"]), adapter_name=name)

    assert [message for message in stacked_warnings(ours) if PEFT_CAUTION in message] == []
    assert len([message for message in stacked_warnings(diffusers_add_adapter) if PEFT_CAUTION in message]) == 2
    # and loaded files stack on a trained adapter without it
    first, second = (save_random_lora(tiny_components(0).transformer, tmp_path / name, seed=seed)
                     for seed, name in ((1, "a"), (2, "b")))  # fmt: skip
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        SemiNFTPipeline.from_pretrained("tiny:0", lora=[first, second])
    assert [str(w.message) for w in caught if PEFT_CAUTION in str(w.message)] == []


@pytest.mark.filterwarnings(f"ignore:{PEFT_CAUTION}")  # diffusers' loader, the peer, cautions
@pytest.mark.parametrize("ranks", [{"to_q": 2, "to_k": 4}, {"to_q": 3, "to_k": 3}], ids=["two ranks", "one rank"])
def test_a_file_loads_as_diffusers_own_loader_applies_it(tmp_path, ranks):
    """A diffusers LoRA without a saved config (the ranks read from its tensors, alpha = rank per module) on top
    of another: our one path gives diffusers' `load_lora_adapter` transformer, output for output."""
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict
    from diffusers import FluxPipeline

    made = tiny_components(0).transformer
    config = LoraConfig(r=ranks["to_q"], lora_alpha=ranks["to_q"], rank_pattern={"to_k": ranks["to_k"]},
                        alpha_pattern={"to_k": ranks["to_k"]}, target_modules=["to_q", "to_k"])  # fmt: skip
    made.add_adapter(config, adapter_name="made")
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, parameter in made.named_parameters():
            if "lora_" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    FluxPipeline.save_lora_weights(tmp_path / "file", transformer_lora_layers=get_peft_model_state_dict(made, adapter_name="made"))
    first = save_random_lora(tiny_components(0).transformer, tmp_path / "first", seed=1)

    ours = SemiNFTPipeline.from_pretrained("tiny:0", lora=[first, tmp_path / "file"]).components.transformer
    theirs = tiny_components(0).transformer
    for name, folder in (("coldstart", first), ("rl", tmp_path / "file")):
        theirs.load_lora_adapter(str(folder / "pytorch_lora_weights.safetensors"), adapter_name=name, prefix="transformer")
    theirs.set_adapters(["coldstart", "rl"])
    assert ours.peft_config["rl"].rank_pattern == theirs.peft_config["rl"].rank_pattern
    assert_same_forward(ours, theirs)


def assert_same_forward(a: torch.nn.Module, b: torch.nn.Module) -> None:
    """Both transformers' diffusers forward on fixed inputs, equal to float32 rounding, and not the base's."""
    torch.testing.assert_close(plain_flux(a), plain_flux(b), rtol=0, atol=1e-6)
    assert not torch.allclose(plain_flux(a), plain_flux(tiny_components(0).transformer), rtol=0, atol=1e-4)


def test_only_the_known_notice_of_a_logger_is_dropped(caplog):
    name, notice = next(iter(IMPORT_NOTICES.items()))
    with caplog.at_level(logging.WARNING, logger=name):
        logging.getLogger(name).warning(notice + ": No module named 'kernels'")
        logging.getLogger(name).warning("a real problem")
    assert [record.getMessage() for record in caplog.records] == ["a real problem"]
