"""One evaluation item and one evaluation set, as every loader, method and report sees them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from PIL import Image

from seminft_bench.imaging import ImageSource, read_image
from seminft_bench.presets import Lut1D, Lut3D, Preset

ROLES = ("source", "reference", "target")


@dataclass(frozen=True)
class Sample:
    """A source to regrade like ``reference``; ``target`` (the true answer) and ``preset`` only where the set has them.

    ``name`` is unique within its set and names every file written for it
    (``outputs/{method}/{name}.png``). Images stay encoded (paths or bytes) until used,
    so a 1,000-sample set costs little memory.
    """

    name: str
    source: ImageSource
    reference: ImageSource
    target: ImageSource | None = None
    preset: Preset | Lut3D | Lut1D | None = None
    info: Mapping[str, object] = field(default_factory=dict)

    def image(self, role: str) -> Image.Image:
        """``role`` ("source", "reference" or "target") decoded as an RGB PIL image."""
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, got {role!r}")
        src = getattr(self, role)
        if src is None:
            raise ValueError(f"sample {self.name!r} has no {role}")
        return read_image(src, name=f"{self.name}/{role}")


@dataclass(frozen=True)
class Skipped:
    """A sample left out of a set (``--skip-bad``) and why."""

    name: str
    reason: str


@dataclass(frozen=True)
class BenchSet:
    """An evaluation set: its display ``name``, its samples in a stable order, and what was skipped at load."""

    name: str
    samples: Sequence[Sample]
    skipped: Sequence[Skipped] = ()

    @property
    def has_targets(self) -> bool:
        return bool(self.samples) and all(sample.target is not None for sample in self.samples)

    @property
    def has_presets(self) -> bool:
        return bool(self.samples) and all(sample.preset is not None for sample in self.samples)

    def __len__(self) -> int:
        return len(self.samples)
