from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter
from skimage import data

from seminft_bench.pipelines.frames import fit_frame, frame_problem, pair_problem, sample_frame_pairs
from media import write_video
from seminft_bench.pipelines.videos import VideoEntry, VideoReader, open_video, sample_videos_dir

CLIPS = sample_videos_dir()
BIKES = CLIPS / "bikes.mp4"  # 25 fps; shot changes after frames 29, 75, 136, 186 and 241


@pytest.fixture(scope="module")
def bikes() -> VideoReader:
    with open_video(BIKES) as reader:
        yield reader


@pytest.fixture(scope="module")
def bikes_frames(bikes) -> dict[int, np.ndarray]:
    indices = [15, 40, 65, 150]
    return dict(zip(indices, bikes.frames(indices)))


@pytest.fixture(scope="module")
def staged_video(tmp_path_factory) -> Path:
    """10 fps, losslessly coded: 3 s black (0-29), 3 s of one still frame (30-59), 6 s of real motion (60-119)."""
    with open_video(CLIPS / "carphone_pristine.mp4") as reader:
        motion = reader.frames(range(60))
    frames = np.concatenate([np.zeros((30, *motion.shape[1:]), np.uint8), np.repeat(motion[:1], 30, axis=0), motion])
    path = write_video(tmp_path_factory.mktemp("staged") / "staged.mkv", frames, "ffv1", fps=10, pix_fmt="yuv444p")
    return path


def gaussian_blur(frame: np.ndarray, fraction_of_short_side: float) -> np.ndarray:
    radius = fraction_of_short_side * min(frame.shape[:2])
    return np.asarray(Image.fromarray(frame).filter(ImageFilter.GaussianBlur(radius)))


# --- frame_problem ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["bikes.mp4", "bigbuckbunny.mp4", "carphone_pristine.mp4", "carphone_distorted.mp4"])
def test_ordinary_video_frames_pass(name):
    with open_video(CLIPS / name) as reader:
        indices = np.linspace(0, reader.num_frames - 1, 6).round().astype(int).tolist()
        assert [frame_problem(frame) for frame in reader.frames(indices)] == [None] * 6


@pytest.mark.parametrize("photo", ["astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field"])
def test_ordinary_photos_pass(photo):
    assert frame_problem(getattr(data, photo)()) is None  # hubble_deep_field: dark, yet full of stars


def test_black_frames(bikes_frames):
    rng = np.random.default_rng(0)
    assert frame_problem(np.zeros((272, 640, 3), np.uint8)) == "black_frame"
    noise = rng.normal(4, 2, (272, 640, 3)).clip(0, 255).astype(np.uint8)
    assert frame_problem(noise) == "black_frame"
    dim = (bikes_frames[40] * 0.3).astype(np.uint8)
    assert frame_problem(dim) is None


def test_blown_out_frames(bikes_frames):
    assert frame_problem(np.full((272, 640, 3), 255, np.uint8)) == "blown_out"
    mostly_white = bikes_frames[40].copy()
    mostly_white[:, :420] = 252
    assert frame_problem(mostly_white) == "blown_out"
    partly_white = bikes_frames[40].copy()
    partly_white[:, :200] = 255
    assert frame_problem(partly_white) is None


def test_blurred_frames_whatever_the_resolution(bikes_frames):
    frame = bikes_frames[150]
    assert frame_problem(gaussian_blur(frame, 0.03)) == "blurry"
    assert frame_problem(gaussian_blur(frame, 0.01)) is None
    large = fit_frame(frame, 1024)
    assert frame_problem(large) is None
    assert frame_problem(gaussian_blur(large, 0.03)) == "blurry"
    assert frame_problem(np.full((272, 640, 3), 128, np.uint8)) == "blurry"


# --- pair_problem -------------------------------------------------------------------------------


def test_identical_and_nearly_identical_frames_are_near_duplicates(bikes_frames):
    frame = bikes_frames[40]
    assert pair_problem(frame, frame) == "near_duplicate"
    noisy = (frame + np.random.default_rng(0).normal(0, 2, frame.shape)).clip(0, 255).astype(np.uint8)
    assert pair_problem(frame, noisy) == "near_duplicate"


def test_one_second_apart_within_a_shot_is_a_pair(bikes_frames):
    assert pair_problem(bikes_frames[40], bikes_frames[65]) is None


def test_frames_across_a_cut_or_from_other_clips_are_scene_cuts(bikes_frames):
    assert pair_problem(bikes_frames[15], bikes_frames[40]) == "scene_cut"
    with open_video(CLIPS / "bigbuckbunny.mp4") as reader:
        bunny = reader.frames([60])[0]
    assert pair_problem(bikes_frames[40], bunny) == "scene_cut"
    assert pair_problem(data.astronaut(), data.coffee()) == "scene_cut"


# --- fit_frame ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "short_side", "expected"),
    [
        ((272, 640), 512, (512, 1200)),  # upscaled: 1204.7 wide, cropped to 1200
        ((720, 1280), 256, (256, 448)),  # downscaled: 455 wide, cropped to 448
        ((640, 272), 512, (1200, 512)),  # portrait
        ((144, 176), 500, (496, 608)),  # a short side that is not a multiple of 16 is cropped too
        ((512, 768), 512, (512, 768)),  # already fitting: untouched
    ],
)
def test_fit_frame_geometry(shape, short_side, expected):
    frame = np.random.default_rng(0).integers(0, 256, (*shape, 3), dtype=np.uint8)
    fitted = fit_frame(frame, short_side)
    assert fitted.shape == (*expected, 3) and fitted.dtype == np.uint8
    assert fitted.flags.c_contiguous
    if shape == expected:
        np.testing.assert_array_equal(fitted, frame)


def test_fit_frame_crops_the_centre():
    frame = np.zeros((512, 808, 3), np.uint8)
    frame[:, 4:804] = 255  # 808 -> 800: 4 columns off each side
    fitted = fit_frame(frame, 512)
    assert fitted.shape == (512, 800, 3) and fitted.min() == 255


def test_fit_frame_rejects_tiny_sizes():
    with pytest.raises(ValueError, match="at least 16"):
        fit_frame(np.zeros((64, 64, 3), np.uint8), 8)


# --- sample_frame_pairs -------------------------------------------------------------------------


class CountingReader(VideoReader):
    """A real reader that remembers which frames were asked of it."""

    backend = "counting"

    def __init__(self, reader: VideoReader):
        self.inner, self.decoded = reader, []
        self.num_frames, self.fps, self.size = reader.num_frames, reader.fps, reader.size

    def _decode(self, indices):
        self.decoded.extend(indices)
        return self.inner.frames(indices)

    def close(self):
        self.inner.close()


def test_pairs_are_deterministic_spaced_and_fitted(bikes):
    entry = VideoEntry(BIKES.absolute(), "bikes.mp4")
    first, first_reasons = sample_frame_pairs(bikes, entry, np.random.default_rng(3), 3, short_side=256)
    again, again_reasons = sample_frame_pairs(bikes, entry, np.random.default_rng(3), 3, short_side=256)

    assert len(first) == 3 and first_reasons == again_reasons
    assert [(p.index_a, p.index_b) for p in first] == [(p.index_a, p.index_b) for p in again]
    for pair, same in zip(first, again):
        np.testing.assert_array_equal(pair.frame_a, same.frame_a)
        np.testing.assert_array_equal(pair.frame_b, same.frame_b)
        assert abs(pair.index_a - pair.index_b) >= 25
        assert pair.frame_a.shape == pair.frame_b.shape == (256, 592, 3)
        np.testing.assert_array_equal(pair.frame_a, fit_frame(bikes.frames([pair.index_a])[0], 256))
    used = [i for p in first for i in (p.index_a, p.index_b)]
    assert len(set(used)) == len(used)
    other, _ = sample_frame_pairs(bikes, entry, np.random.default_rng(4), 3, short_side=256)
    assert [(p.index_a, p.index_b) for p in other] != [(p.index_a, p.index_b) for p in first]


def test_min_gap_follows_the_frame_rate(bikes):
    entry = VideoEntry(BIKES.absolute(), "bikes.mp4")
    pairs, _ = sample_frame_pairs(bikes, entry, np.random.default_rng(0), 4, min_gap_s=4.0, short_side=64)
    assert pairs and all(abs(p.index_a - p.index_b) >= 100 for p in pairs)


def test_frames_come_from_the_frame_range(bikes):
    entry = VideoEntry(BIKES.absolute(), "bikes.mp4", frame_range=(137, 187))  # one shot, 2 s
    for seed in range(3):
        pairs, _ = sample_frame_pairs(bikes, entry, np.random.default_rng(seed), 2, short_side=64)
        assert len(pairs) == 2
        assert all(137 <= i < 187 for p in pairs for i in (p.index_a, p.index_b))


@pytest.mark.parametrize(
    ("frame_range", "min_gap_s"),
    [((0, 20), 1.0), ((0, 25), 1.0), ((240, 400), 1.0), ((300, 400), 1.0), (None, 10.0)],
)
def test_too_short_for_the_gap(bikes, frame_range, min_gap_s):
    entry = VideoEntry(BIKES.absolute(), "bikes.mp4", frame_range=frame_range)
    assert sample_frame_pairs(bikes, entry, np.random.default_rng(0), 2, min_gap_s=min_gap_s) == ([], ["too_short"])


def test_rejections_are_counted_by_reason(staged_video):
    with open_video(staged_video) as reader:
        black = VideoEntry(staged_video, "staged.mkv", frame_range=(0, 30))
        assert sample_frame_pairs(reader, black, np.random.default_rng(0), 2) == ([], ["black_frame"] * 8)
        still = VideoEntry(staged_video, "staged.mkv", frame_range=(30, 60))
        pairs, reasons = sample_frame_pairs(reader, still, np.random.default_rng(0), 2, max_tries=5)
        assert (pairs, reasons) == ([], ["near_duplicate"] * 5)


def test_bad_frames_are_not_drawn_again_and_decoding_stays_small(staged_video):
    with open_video(staged_video) as inner:
        reader = CountingReader(inner)
        entry = VideoEntry(staged_video, "staged.mkv")
        pairs, reasons = sample_frame_pairs(reader, entry, np.random.default_rng(1), 4, short_side=64)
    assert len(pairs) == 4 and len(pairs) + len(reasons) <= 16
    assert all(i >= 30 for p in pairs for i in (p.index_a, p.index_b))
    assert "black_frame" in reasons and set(reasons) <= {"black_frame", "near_duplicate"}
    assert len(reader.decoded) <= 2 * (len(pairs) + len(reasons)) < reader.num_frames
    black_drawn = [i for i in reader.decoded if i < 30]
    assert len(black_drawn) == len(set(black_drawn))
