"""Bounds that frame every table: do nothing, copy the reference, or apply the true preset.

``reference`` scores high with style judges yet keeps none of the source's content,
which is why the success ratio (DINO similarity to the source) sits beside the scores.
"""

from __future__ import annotations

from PIL import Image

from seminft_bench.bench.methods.base import Method, MethodUnavailable
from seminft_bench.bench.samples import BenchSet, Sample
from seminft_bench.imaging import from_array, to_array
from seminft_bench.presets import Lut1D, Lut3D, apply_lut


class Identity(Method):
    name = "identity"

    def transfer(self, source: Image.Image, reference: Image.Image) -> Image.Image:
        return source.copy()


class Reference(Method):
    name = "reference"

    def transfer(self, source: Image.Image, reference: Image.Image) -> Image.Image:
        return reference.resize(source.size, Image.Resampling.LANCZOS) if reference.size != source.size else reference.copy()


class Oracle(Method):
    """Applies the sample's true preset to the source: the ceiling for sets built from presets."""

    name = "oracle"

    def transfer(self, source: Image.Image, reference: Image.Image) -> Image.Image:
        raise MethodUnavailable("oracle needs the sample's true preset; call run(sample)")

    def prepare(self, bench_set: BenchSet) -> None:
        if not bench_set.has_presets:
            raise MethodUnavailable(f"oracle: the set {bench_set.name!r} does not record the true preset of its samples")

    def run(self, sample: Sample) -> Image.Image:
        if sample.preset is None:
            raise MethodUnavailable(f"oracle: sample {sample.name!r} does not record its preset")
        lut = sample.preset if isinstance(sample.preset, (Lut1D, Lut3D)) else sample.preset.to_lut()
        return from_array(apply_lut(to_array(sample.image("source")), lut))
