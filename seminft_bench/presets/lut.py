"""LUT containers: plain float32 tables plus the input domain they cover.

Kept free of IO and maths so readers, writers, kernels and the preset compiler
all share one small vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


class LutFormatError(ValueError):
    """A LUT file that cannot be read; the message names the file and, where known, the line."""

    def __init__(self, message: str, path: object = None, line: int | None = None):
        where = ""
        if path is not None:
            where = f"{path}" + (f", line {line}" if line is not None else "") + ": "
        super().__init__(where + message)
        self.path = path
        self.line = line


def _domain(value: object, name: str) -> np.ndarray:
    arr = np.broadcast_to(np.asarray(value, dtype=np.float32), (3,)).copy()
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite, got {arr.tolist()}")
    return arr


@dataclass(eq=False)
class Lut1D:
    """Per-channel curves: ``table[i, c]`` is the output of channel ``c`` at the i-th of N evenly spaced inputs."""

    table: np.ndarray
    domain_min: np.ndarray = field(default_factory=lambda: np.zeros(3, np.float32))
    domain_max: np.ndarray = field(default_factory=lambda: np.ones(3, np.float32))
    title: str = ""

    def __post_init__(self) -> None:
        self.table = np.ascontiguousarray(self.table, dtype=np.float32)
        if self.table.ndim != 2 or self.table.shape[1] != 3 or self.table.shape[0] < 2:
            raise ValueError(f"Lut1D table must be [N>=2, 3], got {self.table.shape}")
        self.domain_min = _domain(self.domain_min, "domain_min")
        self.domain_max = _domain(self.domain_max, "domain_max")
        if np.any(self.domain_max <= self.domain_min):
            raise ValueError("Lut1D domain_max must exceed domain_min")

    @property
    def size(self) -> int:
        return self.table.shape[0]

    @classmethod
    def identity(cls, size: int = 1024) -> "Lut1D":
        ramp = np.linspace(0.0, 1.0, size, dtype=np.float32)
        return cls(np.repeat(ramp[:, None], 3, axis=1))


@dataclass(eq=False)
class Lut3D:
    """A colour cube: ``table[r, g, b]`` is the RGB output at that lattice point.

    ``shaper`` is an optional 1D LUT applied before the cube (Resolve's
    "shaper + 3D" files); the cube's domain is then the shaper's output range.
    """

    table: np.ndarray
    domain_min: np.ndarray = field(default_factory=lambda: np.zeros(3, np.float32))
    domain_max: np.ndarray = field(default_factory=lambda: np.ones(3, np.float32))
    title: str = ""
    shaper: Lut1D | None = None

    def __post_init__(self) -> None:
        self.table = np.ascontiguousarray(self.table, dtype=np.float32)
        t = self.table
        if t.ndim != 4 or t.shape[3] != 3 or not (t.shape[0] == t.shape[1] == t.shape[2]) or t.shape[0] < 2:
            raise ValueError(f"Lut3D table must be [N, N, N, 3] with N>=2, got {t.shape}")
        self.domain_min = _domain(self.domain_min, "domain_min")
        self.domain_max = _domain(self.domain_max, "domain_max")
        if np.any(self.domain_max <= self.domain_min):
            raise ValueError("Lut3D domain_max must exceed domain_min")

    @property
    def size(self) -> int:
        return self.table.shape[0]

    @classmethod
    def identity(cls, size: int = 33) -> "Lut3D":
        ramp = np.linspace(0.0, 1.0, size, dtype=np.float32)
        r, g, b = np.meshgrid(ramp, ramp, ramp, indexing="ij")
        return cls(np.stack([r, g, b], axis=-1))

    def lattice(self) -> np.ndarray:
        """Input RGB of every lattice point, ``float32[N, N, N, 3]``, in this cube's domain."""
        n = self.size
        axes = [np.linspace(self.domain_min[c], self.domain_max[c], n, dtype=np.float32) for c in range(3)]
        return np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)
