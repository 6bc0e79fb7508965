"""Judge registry and config files; the cost ledger."""

import json

import pytest

from seminft_bench.vlm import CostLedger, Price, Usage, load_config
from seminft_bench.vlm.config import DEFAULT_JUDGES, SELF_HOSTED_KEY_ENV

TOML = """
[judges.gpt-4o]
model = "gpt-4o-2024-11-20"

[judges.qwen3-vl-32b]
base_url = "http://gpu-box:8000/v1"

[judges.house-judge]
provider = "openai"
model = "house-vlm"
base_url = "https://vlm.example/v1"
api_key_env = "HOUSE_KEY"

[prices.house-judge]
input_per_mtok = 1.0
output_per_mtok = 4.0
"""


def test_builtin_judges():
    assert set(DEFAULT_JUDGES) == {"gpt-4o", "gemini-2.5-flash", "qwen3-vl-32b", "qwen3-vl-8b"}
    assert DEFAULT_JUDGES["gemini-2.5-flash"].api_key_env == ("GEMINI_API_KEY", "GOOGLE_API_KEY")
    assert DEFAULT_JUDGES["qwen3-vl-8b"].model == "Qwen/Qwen3-VL-8B-Instruct"


@pytest.mark.parametrize("suffix", [".toml", ".json"])
def test_config_file_overrides_and_adds_judges(tmp_path, suffix):
    path = tmp_path / f"judges{suffix}"
    if suffix == ".toml":
        path.write_text(TOML)
    else:
        import tomllib

        path.write_text(json.dumps(tomllib.loads(TOML)))
    config = load_config(path)
    assert config.spec("gpt-4o").model == "gpt-4o-2024-11-20"
    assert config.spec("gpt-4o").api_key_env == ("OPENAI_API_KEY",)  # untouched fields keep their defaults
    house = config.spec("house-judge")
    assert (house.provider, house.model, house.api_key_env) == ("openai", "house-vlm", ("HOUSE_KEY",))
    assert config.prices["house-judge"] == Price(1.0, 4.0)
    assert config.prices["gpt-4o"] == Price(2.5, 10.0)
    # A local model given an endpoint is asked through that OpenAI-compatible server, with its own key variable.
    served = config.spec("qwen3-vl-32b").served_at(config.spec("qwen3-vl-32b").base_url)
    assert (served.provider, served.base_url) == ("openai", "http://gpu-box:8000/v1")
    assert served.api_key_env == SELF_HOSTED_KEY_ENV
    assert served.model == "Qwen/Qwen3-VL-32B-Instruct"


@pytest.mark.parametrize(
    "text, message",
    [
        ('[judges.gpt-4o]\nmodle = "x"\n', "unknown field"),
        ('[judges.new]\nmodel = "x"\n', "needs provider"),
        ('[judges.new]\nprovider = "azure"\nmodel = "x"\n', "provider must be one of"),
        ('[pricing]\n', "unknown field"),
        ("[judges\n", "not valid TOML"),
    ],
)
def test_bad_config_names_the_problem(tmp_path, text, message):
    path = tmp_path / "judges.toml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message) as caught:
        load_config(path)
    assert "judges.toml" in str(caught.value)


def test_unknown_judge_lists_known_ones():
    with pytest.raises(ValueError, match="unknown judge.*gpt-4o"):
        load_config().spec("gpt-5")


def test_ledger_prices_tokens_and_accumulates_runs(tmp_path):
    ledger = CostLedger({"gpt-4o": Price(2.5, 10.0)})
    ledger.record_call("gpt-4o", Usage(1_000_000, 100_000))
    ledger.record_call("gpt-4o", Usage(1_000_000, 100_000))
    ledger.record_cached("gpt-4o")
    ledger.record_call("mystery", Usage(10, 10))
    assert ledger.cost("gpt-4o") == pytest.approx(2 * (2.5 + 1.0))
    assert ledger.cost("mystery") is None and ledger.total_cost() == pytest.approx(7.0)
    assert "no price" in ledger.report() and "7.0000" in ledger.report()

    path = ledger.write(tmp_path / "run.costs.json")
    total = CostLedger.read(path, ledger.prices)
    total.add(ledger)
    entry = total.entries["gpt-4o"]
    assert (entry.calls, entry.cached, entry.input_tokens) == (4, 2, 4_000_000)
    assert json.loads(total.write(path).read_text())["total_cost_usd"] == pytest.approx(14.0)
