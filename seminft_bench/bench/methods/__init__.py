"""The methods registry: ``get_method(name)`` for every method the benchmark can run.

Names map to "module:factory" strings so that asking for ``reinhard`` never imports
diffusers or an API SDK. Adding a method is one
module with a `Method` subclass and one line in `REGISTRY` (``ours``: `methods.ours`); a class that needs the
shared cache, ledger, transport or device defines ``from_context(context)``. ``predictions:DIR`` reads
an external method's outputs from a folder. ``NAME:VARIANT`` (``ours:w-o-rl``) is a registered method
with options of its own, ``context.options["NAME:VARIANT"]``: several settings of one method compared
in one run, as the rows of an ablation table.
"""

from __future__ import annotations

import importlib
from dataclasses import replace

from seminft_bench.bench.methods.base import Method, MethodContext, MethodUnavailable

REGISTRY: dict[str, str] = {
    "identity": "seminft_bench.bench.methods.bounds:Identity",
    "reference": "seminft_bench.bench.methods.bounds:Reference",
    "oracle": "seminft_bench.bench.methods.bounds:Oracle",
    "reinhard": "seminft_bench.bench.methods.classical:Reinhard",
    "mkl": "seminft_bench.bench.methods.classical:MKL",
    "idt": "seminft_bench.bench.methods.classical:IDT",
    "histogram": "seminft_bench.bench.methods.classical:Histogram",
    "gpt-image-1.5": "seminft_bench.bench.methods.editors:GPTImage",
    "nano-banana": "seminft_bench.bench.methods.editors:NanoBanana",
    "qwen-image-edit": "seminft_bench.bench.methods.editors:QwenImageEdit",
    "ours": "seminft_bench.bench.methods.ours:Ours",
}
PREDICTIONS_PREFIX = "predictions:"


def method_names() -> list[str]:
    """Every registered name, plus the ``predictions:DIR`` and ``NAME:VARIANT`` forms."""
    return [*REGISTRY, PREDICTIONS_PREFIX + "DIR", "NAME:VARIANT"]


def is_method_name(name: str) -> bool:
    """A registered name, ``predictions:DIR``, or ``NAME:VARIANT`` of a registered NAME."""
    return name in REGISTRY or name.startswith(PREDICTIONS_PREFIX) or name.partition(":")[0] in REGISTRY


def get_method(name: str, context: MethodContext | None = None) -> Method:
    """The method called ``name``, ready to run; `MethodUnavailable` says what is missing when it cannot."""
    if name.startswith(PREDICTIONS_PREFIX):
        from seminft_bench.bench.methods.predictions import Predictions

        return Predictions(name[len(PREDICTIONS_PREFIX) :])
    if not is_method_name(name):
        raise ValueError(f"unknown method {name!r}; known: {', '.join(method_names())}")
    context = context or MethodContext()
    registered, _, variant = name.partition(":")
    if variant:
        if name not in context.options:
            raise MethodUnavailable(f"{name}: no options for variant {variant!r} (give them as --{registered}-variant {variant}=FILE.yaml)")
        context = replace(context, options={**context.options, registered: context.options[name]})
    module_name, factory_name = REGISTRY[registered].split(":")
    factory = getattr(importlib.import_module(module_name), factory_name)
    from_context = getattr(factory, "from_context", None)
    method = from_context(context) if from_context else factory()
    method.name = name
    return method


__all__ = ["Method", "MethodContext", "MethodUnavailable", "REGISTRY", "get_method", "is_method_name", "method_names"]
