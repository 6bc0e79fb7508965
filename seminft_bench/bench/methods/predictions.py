"""``predictions:DIR``: outputs of any external method (SA-LUT, Neural Preset, JarvisArt, …) read from a folder."""

from __future__ import annotations

import os
from pathlib import Path

from PIL import Image

from seminft_bench.bench.methods.base import Method, MethodUnavailable
from seminft_bench.bench.samples import BenchSet, Sample
from seminft_bench.imaging import IMAGE_SUFFIXES, read_image


class Predictions(Method):
    """One image per sample, named by the sample's stem; the method is named after the folder.

    An output whose size differs from the source's is resized to it (some methods work at
    a fixed resolution), so full-reference metrics compare like with like.
    """

    runs_on = "driver"  # the folder is on the driver's machine

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise MethodUnavailable(f"predictions: {self.folder} is not a folder of images")
        self.name = self.folder.name
        self.files = {path.stem: path for path in sorted(self.folder.iterdir()) if path.suffix.lower() in IMAGE_SUFFIXES}

    def settings(self) -> dict:
        """The folder and each file's name, size and modification time: a changed prediction is read again."""
        files = {stem: [path.name, *_stat(path)] for stem, path in self.files.items()}
        return {**super().settings(), "folder": str(self.folder.resolve()), "files": files}

    def transfer(self, source: Image.Image, reference: Image.Image) -> Image.Image:
        raise MethodUnavailable("predictions are looked up by sample name; call run(sample)")

    def prepare(self, bench_set: BenchSet) -> None:
        if not any(sample.name in self.files for sample in bench_set.samples):
            raise MethodUnavailable(f"predictions: no file in {self.folder} is named after a sample of {bench_set.name!r}")

    def run(self, sample: Sample) -> Image.Image:
        path = self.files.get(sample.name)
        if path is None:
            raise FileNotFoundError(f"{self.folder} has no prediction for sample {sample.name!r}")
        output = read_image(path)
        size = sample.image("source").size
        return output if output.size == size else output.resize(size, Image.Resampling.LANCZOS)


def _stat(path: Path) -> tuple[int, int]:
    info = path.stat()
    return info.st_size, info.st_mtime_ns
