"""Commands print what matters: no third-party import notices or peft cautions on stderr, while every other
message of those libraries, and our own, still shows."""

import logging
import re
import subprocess
import sys
import warnings

from test_model_nft_loop import write_pairs
from test_model_sft import write_coldstart

from seminft_bench.quiet import IMPORT_NOTICES, STACKED_ADAPTER_WARNING, stacking_adapters

THIRD_PARTY = re.compile(r"site-packages|bitsandbytes|torchao|peft|_pytree|Enum subclass|kernels-community")
"""What a line of a third-party notice names: its file, its library, or its text."""


def train(*args: str) -> str:
    """``seminft-train ARGS`` in a fresh process (where the libraries are first imported); its stderr."""
    result = subprocess.run([sys.executable, "-m", "seminft_bench.cli.train", *args],
                            capture_output=True, text=True, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stderr


def third_party_lines(stderr: str) -> list[str]:
    """The lines (tqdm's redrawn ones split at ``\\r``) that come from a third-party library."""
    return [line for line in re.split(r"[\r\n]+", stderr) if THIRD_PARTY.search(line)]


def test_sft_then_nft_over_its_lora_print_no_third_party_notice(tmp_path):
    coldstart, pairs = write_coldstart(tmp_path / "coldstart"), write_pairs(tmp_path / "pairs")
    common = ["--tiny", "--max-steps", "1", "--resolution", "48", "--cache", str(tmp_path / "cache")]
    sft = train("sft", "--dataset", str(coldstart), "--out", str(tmp_path / "sft"), *common)
    # NFT stacks its rl and old adapters on the loaded cold-start one: peft's caution would show here
    nft = train("nft", "--dataset", str(pairs), "--coldstart-lora", str(tmp_path / "sft"), "--reward", "color-stats",
                "--groups-per-step", "1", "--out", str(tmp_path / "nft"), *common)  # fmt: skip
    assert third_party_lines(sft) == []
    assert third_party_lines(nft) == []


def test_only_the_known_notice_of_a_logger_is_dropped(caplog):
    name, notice = next(iter(IMPORT_NOTICES.items()))
    with caplog.at_level(logging.WARNING, logger=name):
        logging.getLogger(name).warning(notice + ": No module named 'kernels'")
        logging.getLogger(name).warning("a real problem")
    assert [record.getMessage() for record in caplog.records] == ["a real problem"]


def test_stacking_adapters_ignores_peft_caution_and_nothing_else():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with stacking_adapters():
            warnings.warn(STACKED_ADAPTER_WARNING + ". Make sure to know what you are doing!", UserWarning)
            warnings.warn("our own warning", UserWarning)
        warnings.warn(STACKED_ADAPTER_WARNING + " (outside the block)", UserWarning)
    assert [str(w.message) for w in caught] == ["our own warning", STACKED_ADAPTER_WARNING + " (outside the block)"]
