"""The named judges and the config file that overrides their model ids, endpoints and prices.

Built-in judges (paper §4.1, §3.4.1):

=================  ============  ==================================  =======================================
name               provider      model                               API key (environment only)
=================  ============  ==================================  =======================================
gpt-4o             openai        gpt-4o                              OPENAI_API_KEY (OPENAI_BASE_URL honoured)
gemini-2.5-flash   gemini        gemini-2.5-flash                    GEMINI_API_KEY, else GOOGLE_API_KEY
qwen3-vl-32b       transformers  Qwen/Qwen3-VL-32B-Instruct          none (local GPU)
qwen3-vl-8b        transformers  Qwen/Qwen3-VL-8B-Instruct           none (local GPU)
=================  ============  ==================================  =======================================

A ``transformers`` judge given a base URL is asked through that OpenAI-compatible
server (vLLM, SGLang) under the same model id instead, with ``VLLM_API_KEY`` as its
key when set (never ``OPENAI_API_KEY``: a self-hosted server must not receive it).

Config file, TOML or JSON with the same structure (every field optional)::

    [judges.qwen3-vl-32b]
    base_url = "http://gpu-box:8000/v1"        # an OpenAI-compatible server
    model = "Qwen/Qwen3-VL-32B-Instruct"        # the id that server serves

    [judges.gpt-4o]
    model = "gpt-4o-2024-11-20"

    [judges.my-judge]                           # a new judge needs a provider and a model
    provider = "openai"                         # openai | gemini | transformers
    model = "my-model"
    base_url = "https://example.com/v1"
    api_key_env = ["MY_API_KEY"]                # environment variables tried in order

    [prices.gpt-4o]                             # US dollars per million tokens
    input_per_mtok = 2.5
    output_per_mtok = 10.0
"""

from __future__ import annotations

import json
import os
import tomllib
from dataclasses import dataclass, fields, replace
from pathlib import Path

from seminft_bench.vlm.costs import DEFAULT_PRICES, Price

PROVIDERS = ("openai", "gemini", "transformers")
SELF_HOSTED_KEY_ENV = ("VLLM_API_KEY",)


@dataclass(frozen=True)
class JudgeSpec:
    """Where a named judge lives: provider kind, model id, endpoint, and the variables holding its key."""

    name: str
    provider: str
    model: str
    base_url: str | None = None
    api_key_env: tuple[str, ...] = ()

    def __post_init__(self):
        if self.provider not in PROVIDERS:
            raise ValueError(f"judge {self.name!r}: provider must be one of {PROVIDERS}, got {self.provider!r}")

    def served_at(self, base_url: str | None) -> JudgeSpec:
        """This judge asked at ``base_url`` (None: unchanged); a local model becomes an OpenAI-compatible server."""
        if base_url is None:
            return self
        if self.provider == "transformers":
            key_env = self.api_key_env or SELF_HOSTED_KEY_ENV
            return replace(self, provider="openai", base_url=base_url, api_key_env=key_env)
        return replace(self, base_url=base_url)


DEFAULT_JUDGES: dict[str, JudgeSpec] = {
    spec.name: spec
    for spec in (
        JudgeSpec("gpt-4o", "openai", "gpt-4o", api_key_env=("OPENAI_API_KEY",)),
        JudgeSpec("gemini-2.5-flash", "gemini", "gemini-2.5-flash", api_key_env=("GEMINI_API_KEY", "GOOGLE_API_KEY")),
        JudgeSpec("qwen3-vl-32b", "transformers", "Qwen/Qwen3-VL-32B-Instruct"),
        JudgeSpec("qwen3-vl-8b", "transformers", "Qwen/Qwen3-VL-8B-Instruct"),
    )
}


@dataclass(frozen=True)
class JudgeConfig:
    judges: dict[str, JudgeSpec]
    prices: dict[str, Price]

    def spec(self, name: str) -> JudgeSpec:
        if name not in self.judges:
            known = ", ".join(sorted(self.judges))
            raise ValueError(f"unknown judge {name!r}; known: {known} (add one in a judge config file)")
        return self.judges[name]


def load_config(path: str | os.PathLike | None = None) -> JudgeConfig:
    """The built-in judges and prices, overridden by the TOML or JSON file at ``path`` (if any)."""
    judges, prices = dict(DEFAULT_JUDGES), dict(DEFAULT_PRICES)
    if path is None:
        return JudgeConfig(judges, prices)
    data = _read_file(Path(path))
    _reject_unknown(data, {"judges", "prices"}, str(path))
    for name, overrides in data.get("judges", {}).items():
        judges[name] = _judge_spec(name, overrides, judges.get(name), str(path))
    for name, price in data.get("prices", {}).items():
        _reject_unknown(price, {"input_per_mtok", "output_per_mtok"}, f"{path}: prices.{name}")
        prices[name] = Price(float(price.get("input_per_mtok", 0.0)), float(price.get("output_per_mtok", 0.0)))
    return JudgeConfig(judges, prices)


def _read_file(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
        return json.loads(text) if path.suffix.lower() == ".json" else tomllib.loads(text)
    except OSError as error:
        raise ValueError(f"{path}: cannot read judge config: {error.strerror or error}") from error
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as error:
        kind = "JSON" if path.suffix.lower() == ".json" else "TOML"
        raise ValueError(f"{path}: not valid {kind}: {error}") from error


def _judge_spec(name: str, overrides: dict, base: JudgeSpec | None, where: str) -> JudgeSpec:
    allowed = {f.name for f in fields(JudgeSpec)} - {"name"}
    _reject_unknown(overrides, allowed, f"{where}: judges.{name}")
    if isinstance(overrides.get("api_key_env"), str):
        overrides = {**overrides, "api_key_env": [overrides["api_key_env"]]}
    if "api_key_env" in overrides:
        overrides = {**overrides, "api_key_env": tuple(overrides["api_key_env"])}
    missing = {"provider", "model"} - overrides.keys()
    if base is None and missing:
        raise ValueError(f"{where}: new judge {name!r} needs {' and '.join(sorted(missing))}")
    try:
        return replace(base, **overrides) if base is not None else JudgeSpec(name=name, **overrides)
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from None


def _reject_unknown(table: dict, allowed: set[str], where: str) -> None:
    unknown = set(table) - allowed
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
