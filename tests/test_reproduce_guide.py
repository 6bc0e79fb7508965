"""docs/REPRODUCE.md: every command in it parses against the CLI as it is (options, required values,
method and metric names), so the guide cannot drift from the code it documents."""

import re
import shlex
from pathlib import Path

import pytest
import typer

from seminft_bench.bench.methods import is_method_name
from seminft_bench.bench.metrics import METRIC_NAMES
from seminft_bench.cli import bench, data, train

GUIDE = Path(__file__).parents[1] / "docs" / "REPRODUCE.md"
APPS = {"seminft-data": data.app, "seminft-train": train.app, "seminft-bench": bench.app}
ACCELERATE = ["accelerate", "launch", "-m", "seminft_bench.cli.train"]


def commands() -> list[list[str]]:
    """Every seminft-* command line of the guide's bash blocks, continuation lines joined, as words."""
    blocks = re.findall(r"```bash\n(.*?)```", GUIDE.read_text(), flags=re.S)
    lines = [line.split("  #")[0] for block in blocks for line in block.replace("\\\n", " ").splitlines()]
    found = []
    for words in (shlex.split(line) for line in lines if line.strip()):
        if words[:4] == ACCELERATE:
            found.append(["seminft-train", *words[4:]])
        elif words[0].removeprefix(".venv/bin/") in APPS:
            found.append([words[0].removeprefix(".venv/bin/"), *words[1:]])
    return found


def test_the_guide_has_a_command_for_every_table():
    text = " ".join(" ".join(words) for words in commands())
    for needed in ("build-coldstart", "build-rl", "seminft-train sft", "seminft-train nft", "ablations", "instructions",
                   "pst50-unpaired:", "pst50-paired:", "study make", "study tally", "restore"):  # fmt: skip
        assert needed in text


@pytest.mark.parametrize("words", commands(), ids=lambda words: " ".join(words[:3]))
def test_each_command_of_the_guide_parses_against_the_cli(words):
    command = typer.main.get_command(APPS[words[0]])
    args = words[1:]
    while hasattr(command, "commands"):  # a group (typer ships its own click: no isinstance)
        name, *args = args
        assert name in command.commands, f"no command {name!r} in {words[0]}"
        command = command.commands[name]
    context = command.make_context(words[0], list(args))  # raises on unknown options or missing values
    params = context.params
    for method in (params.get("method") or "").split(",") if isinstance(params.get("method"), str) else []:
        assert is_method_name(method), method
    for metric in (params.get("metrics") or "").split(",") if isinstance(params.get("metrics"), str) else []:
        assert metric in METRIC_NAMES, metric
