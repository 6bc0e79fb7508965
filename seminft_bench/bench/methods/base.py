"""What a preset-transfer method is to the runner: PIL in, PIL out, plus a few honest facts about itself."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field

from PIL import Image

from seminft_bench.bench.samples import BenchSet, Sample


class MethodUnavailable(RuntimeError):
    """The method cannot run here (missing weights, API key, GPU or per-sample data); the message says what to provide."""


@dataclass
class MethodContext:
    """Shared services for methods that call models or APIs; local methods ignore it.

    ``cache`` / ``ledger`` / ``transport`` are the judges' (`seminft_bench.vlm`): a reply
    cache on disk, a cost ledger and a retrying, rate-limited transport. ``device`` is
    where local models run (None: CUDA when present).
    """

    cache: object | None = None
    ledger: object | None = None
    transport: object | None = None
    device: str | None = None
    concurrency: int = 8
    options: Mapping[str, Mapping[str, object]] = field(default_factory=dict)
    """Per method name, its own options (``--ours-base`` and the like)."""


class Method(ABC):
    """A preset-transfer method: regrade ``source`` to look like ``reference``.

    Subclasses implement `transfer`; `run` is what the runner calls, so methods that need
    more than the two images (``oracle``: the true preset; ``predictions:DIR``: the file
    named after the sample) override it instead. ``concurrency`` is how many samples the
    runner may have in flight at once (1 for local compute, many for API calls).
    """

    name: str = ""
    concurrency: int = 1
    runs_on: str = "cpu"
    """Where ``seminft-bench run --executor ray`` runs it: "cpu" (a Ray task with one CPU per sample; the
    method object is shipped, so it must pickle), "gpu" (built from its name and options in an actor
    holding one GPU, its model loaded once) or "driver" (API calls and file look-ups, in the process
    that owns the run folder)."""
    version: str = "1"
    """Bump when a change of code changes this method's outputs: its old outputs are then made again."""

    @abstractmethod
    def transfer(self, source: Image.Image, reference: Image.Image) -> Image.Image:
        """Return ``source`` regraded like ``reference``: RGB, the size of ``source``."""

    def run(self, sample: Sample) -> Image.Image:
        return self.transfer(sample.image("source"), sample.image("reference"))

    def settings(self) -> dict:
        """What determines this method's output besides the sample (hashed into the key of every cell it feeds).

        Methods with options extend it with each one that changes an output: model id or path,
        LoRA file hashes, steps, seed, prompt. Never put run-time knobs (concurrency) here.
        """
        return {"class": f"{type(self).__module__}.{type(self).__qualname__}", "version": self.version}

    def prepare(self, bench_set: BenchSet) -> None:
        """Raise `MethodUnavailable` when this method cannot run on ``bench_set`` at all."""

    def close(self) -> None:
        """Release models, clients and threads."""
