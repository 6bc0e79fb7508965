import json
import shutil
from pathlib import Path

import av
import numpy as np
import pytest

from media import write_video
from seminft_bench.pipelines.videos import (
    sample_videos_dir,
    Rejection,
    VideoEntry,
    VideoReadError,
    decord,
    discover_videos,
    open_video,
)

CLIPS = sample_videos_dir()
SMALL_CLIP = CLIPS / "carphone_distorted.mp4"  # 7 kB: cheap to copy around

needs_decord = pytest.mark.skipif(decord is None, reason="decord has no wheel for this platform")


def moving_pattern(count: int = 40, height: int = 96, width: int = 160) -> np.ndarray:
    """Frames that all differ, so a frame off by one is caught."""
    t = np.arange(count)[:, None, None]
    y, x = np.mgrid[:height, :width]
    frames = np.stack([(x * 3 + t * 7) % 256, (y * 2 + t * 5) % 256, ((x + y) + t * 11) % 256], axis=-1)
    return frames.astype(np.uint8)


def decode_all(path: Path) -> np.ndarray:
    """Every frame, decoded in order with nothing skipped: the reference for exact indexing."""
    with av.open(str(path)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


# --- discover_videos -------------------------------------------------------------------------


def test_folder_is_searched_recursively_and_case_insensitively(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "empty").mkdir()
    shutil.copy(SMALL_CLIP, tmp_path / "a" / "b" / "deep.MP4")
    shutil.copy(SMALL_CLIP, tmp_path / "top.mkv")
    shutil.copy(SMALL_CLIP, tmp_path / "a" / "clip.webm")
    (tmp_path / "notes.txt").write_text("not a video")
    (tmp_path / "a" / "cover.jpg").write_bytes(b"\xff\xd8")

    entries, rejections = discover_videos(tmp_path)

    assert [e.relpath for e in entries] == ["a/b/deep.MP4", "a/clip.webm", "top.mkv"]
    assert all(e.path.is_absolute() and e.path.is_file() for e in entries)
    assert all(e.frame_range is None and e.caption is None for e in entries)
    assert rejections == []


def test_single_video_file(tmp_path):
    shutil.copy(SMALL_CLIP, tmp_path / "one.mp4")
    entries, _ = discover_videos(tmp_path / "one.mp4")
    assert entries == [VideoEntry((tmp_path / "one.mp4").absolute(), "one.mp4")]


def test_list_file_with_comments_relative_paths_and_missing_files(tmp_path):
    (tmp_path / "clips").mkdir()
    shutil.copy(SMALL_CLIP, tmp_path / "clips" / "b.mp4")
    shutil.copy(SMALL_CLIP, tmp_path / "clips" / "a.mp4")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    shutil.copy(SMALL_CLIP, outside / "far.mp4")
    listing = tmp_path / "clips" / "videos.txt"
    listing.write_text(
        "# training videos\n\n  b.mp4  \n./a.mp4\na.mp4\n   # indented comment\n"
        f"gone.mp4\n{outside / 'far.mp4'}\n"
    )

    entries, rejections = discover_videos(listing)

    assert [e.relpath for e in entries] == [(outside / "far.mp4").as_posix(), "a.mp4", "b.mp4"]
    assert entries[1].path == (tmp_path / "clips" / "a.mp4").absolute()
    assert rejections == [Rejection("gone.mp4", "missing", "no such file")]


def test_list_paths_resolve_against_video_root(tmp_path):
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    shutil.copy(SMALL_CLIP, root / "sub" / "c.mp4")
    listing = tmp_path / "list.txt"
    listing.write_text("sub/c.mp4\n")

    entries, _ = discover_videos(listing, video_root=root)

    assert [(e.relpath, e.path) for e in entries] == [("sub/c.mp4", (root / "sub" / "c.mp4").absolute())]


def test_open_sora_plan_annotations(tmp_path):
    root = tmp_path / "videos"
    (root / "Fish").mkdir(parents=True)
    shutil.copy(SMALL_CLIP, root / "Fish" / "coral.mp4")
    shutil.copy(SMALL_CLIP, root / "sky.mp4")
    annotations = [
        {"path": "sky.mp4", "cap": "Clouds drift.", "frame_idx": "0:513", "fps": 30, "resolution": {"height": 144}},
        {"path": "Fish/coral.mp4", "frame_idx": "10:40", "cap": ["A coral reef.", "Fish."]},
        {"path": "Fish/coral.mp4", "frame_idx": "10:40", "cap": "A coral reef."},  # repeated: kept once
        {"path": "Fish/lost.mp4", "frame_idx": "0:65", "cap": "Missing."},
        {"path": "sky.mp4"},
    ]
    spec = tmp_path / "anno.json"
    spec.write_text(json.dumps(annotations))

    entries, rejections = discover_videos(spec, video_root=root)

    assert entries == [
        VideoEntry((root / "Fish" / "coral.mp4").absolute(), "Fish/coral.mp4", (10, 40), "A coral reef."),
        VideoEntry((root / "sky.mp4").absolute(), "sky.mp4", None, None),
        VideoEntry((root / "sky.mp4").absolute(), "sky.mp4", (0, 513), "Clouds drift."),
    ]
    assert [r.to_dict() for r in rejections] == [
        {"video": "Fish/lost.mp4", "reason": "missing", "detail": "no such file"}
    ]


def test_annotations_with_relative_paths_need_a_video_root(tmp_path):
    spec = tmp_path / "anno.json"
    spec.write_text(json.dumps([{"path": "a.mp4", "cap": "x", "frame_idx": "0:10"}]))
    with pytest.raises(ValueError, match=r"anno\.json: entry 0: .*video_root"):
        discover_videos(spec)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('[{"path": "a.mp4", "frame_idx": "0:1"},', r"anno\.json: not valid JSON"),
        ('{"path": "a.mp4"}', r"anno\.json: expected a list"),
        ('[{"path": "a.mp4"}, {"cap": "no path"}]', r"anno\.json: entry 1: .*\"path\""),
        ('[{"path": "a.mp4", "frame_idx": "20:10"}]', r"anno\.json: entry 0: frame_idx"),
        ('[{"path": "a.mp4", "frame_idx": "0-10"}]', r"anno\.json: entry 0: frame_idx"),
        ('[{"path": "a.mp4", "cap": 7}]', r"anno\.json: entry 0: \"cap\""),
    ],
)
def test_malformed_annotations_name_the_file_and_entry(tmp_path, content, message):
    spec = tmp_path / "anno.json"
    spec.write_text(content)
    with pytest.raises(ValueError, match=message):
        discover_videos(spec, video_root=tmp_path)


def test_nothing_found_fails_with_what_was_searched(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"empty: no videos found \(looked for .*\.mp4"):
        discover_videos(tmp_path / "empty")
    with pytest.raises(ValueError, match="no such file or folder"):
        discover_videos(tmp_path / "nowhere")
    (tmp_path / "list.txt").write_text("# nothing yet\n")
    with pytest.raises(ValueError, match=r"list\.txt: no videos found"):
        discover_videos(tmp_path / "list.txt")
    (tmp_path / "gone.txt").write_text("a.mp4\nb.mp4\n")
    with pytest.raises(ValueError, match=r"gone\.txt: none of the 2 listed videos exist"):
        discover_videos(tmp_path / "gone.txt")
    (tmp_path / "binary.lst").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ValueError, match=r"binary\.lst: not a UTF-8 text list"):
        discover_videos(tmp_path / "binary.lst")


# --- open_video on the bundled clips ------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "num_frames", "fps", "size"),
    [
        ("bikes.mp4", 250, 25.0, (640, 272)),
        ("bigbuckbunny.mp4", 132, 25.0, (1280, 720)),
        ("carphone_pristine.mp4", 120, 30000 / 1001, (176, 144)),
    ],
)
@pytest.mark.parametrize("backend", [pytest.param("decord", marks=needs_decord), "pyav"])
def test_clip_properties(name, num_frames, fps, size, backend):
    with open_video(CLIPS / name, backend=backend) as reader:
        assert reader.backend == backend
        assert (reader.num_frames, reader.size) == (num_frames, size)
        assert reader.fps == pytest.approx(fps)
        frames = reader.frames([reader.num_frames - 1, 0, 3, 0])
    assert frames.shape == (4, size[1], size[0], 3) and frames.dtype == np.uint8
    np.testing.assert_array_equal(frames[1], frames[3])


@needs_decord
@pytest.mark.parametrize("name", ["bikes.mp4", "bigbuckbunny.mp4", "carphone_pristine.mp4", "carphone_distorted.mp4"])
def test_decord_and_pyav_give_the_same_frames(name):
    with open_video(CLIPS / name, backend="decord") as fast, open_video(CLIPS / name, backend="pyav") as exact:
        assert fast.num_frames == exact.num_frames
        indices = [int(i) for i in np.random.default_rng(7).choice(fast.num_frames, 4, replace=False)]
        indices.append(fast.num_frames - 1)
        np.testing.assert_array_equal(fast.frames(indices), exact.frames(indices))


def test_pyav_frames_are_exact_on_every_frame():
    reference = decode_all(SMALL_CLIP)
    with open_video(SMALL_CLIP, backend="pyav") as reader:
        order = np.random.default_rng(0).permutation(reader.num_frames).tolist()
        np.testing.assert_array_equal(reader.frames(order), reference[order])


def test_frames_checks_indices():
    with open_video(SMALL_CLIP) as reader:
        assert reader.frames([]).shape == (0, 144, 176, 3)
        with pytest.raises(IndexError, match=r"\[120\]"):
            reader.frames([0, 120])


# --- other containers and codecs ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "codec", "options"),
    [
        ("b_frames.mpg", "mpeg2video", {"bf": 2}),  # MPEG-PS: decord's seeking returns neighbouring frames
        ("b_frames.avi", "mpeg4", {"bf": 2}),  # AVI with B-frames: same
        ("stream.ts", "mpeg2video", {"bf": 2}),  # MPEG-TS: seeks land unreliably, the reader rewinds
        ("clip.mkv", "mpeg4", {}),
    ],
)
def test_frames_are_exact_in_every_container(tmp_path, name, codec, options):
    path = write_video(tmp_path / name, moving_pattern(), codec, **options)
    reference = decode_all(path)
    with open_video(path) as reader:
        assert reader.num_frames == len(reference) == 40
        order = [5, 17, 30, 2, 39, 0, 20, 21]
        np.testing.assert_array_equal(reader.frames(order), reference[order])


def test_codec_decord_lacks_falls_back_to_pyav(tmp_path):
    if "libsvtav1" not in av.codecs_available:
        pytest.skip("this PyAV build has no AV1 encoder")
    path = write_video(tmp_path / "av1.mp4", moving_pattern(12), "libsvtav1")
    with open_video(path) as reader:
        assert reader.backend == "pyav"
        np.testing.assert_array_equal(reader.frames([11, 4]), decode_all(path)[[11, 4]])
    if decord is not None:
        with pytest.raises(VideoReadError, match="decord cannot open it"):
            open_video(path, backend="decord")


# --- broken inputs ------------------------------------------------------------------------------


def faststart_copy(source: Path, target: Path) -> Path:
    """The same stream with its index (moov) first, as web videos are: a cut copy keeps its index."""
    with av.open(str(source)) as src, av.open(str(target), "w", options={"movflags": "faststart"}) as dst:
        stream = dst.add_stream_from_template(src.streams.video[0])
        for packet in src.demux(src.streams.video[0]):
            if packet.dts is not None:
                packet.stream = stream
                dst.mux(packet)
    return target


def audio_only(path: Path) -> Path:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        for _ in range(10):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate = 16000
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def broken_file(kind: str, folder: Path) -> Path:
    clip = (CLIPS / "bikes.mp4").read_bytes()
    if kind == "zero_bytes":
        return _write(folder / "zero.mp4", b"")
    if kind == "cut_in_half":
        return _write(folder / "half.mp4", clip[: len(clip) // 2])
    if kind == "garbage":
        return _write(folder / "garbage.mp4", np.random.default_rng(0).bytes(50_000))
    if kind == "text":
        return _write(folder / "notes.mp4", b"These are my notes, not a video.\n" * 20)
    if kind == "audio_only":
        return audio_only(folder / "sound.mp4")
    if kind == "unknown_codec":  # the sample entry and its config renamed: no demuxer or decoder knows them
        data = SMALL_CLIP.read_bytes().replace(b"avc1", b"zzzz").replace(b"avcC", b"zzzC")
        return _write(folder / "unknown.mp4", data)
    raise AssertionError(kind)


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("zero_bytes", "empty"),
        ("cut_in_half", "unreadable"),
        ("garbage", "unreadable"),
        ("text", "unreadable"),
        ("audio_only", "empty"),
        ("unknown_codec", "unsupported_codec"),
    ],
)
@pytest.mark.parametrize("backend", [None, "pyav"])
def test_broken_files_raise_with_their_reason(tmp_path, kind, reason, backend):
    path = broken_file(kind, tmp_path)
    with pytest.raises(VideoReadError) as caught:
        open_video(path, backend=backend)
    assert caught.value.reason == reason
    assert isinstance(caught.value, ValueError)
    assert str(path) in str(caught.value) and str(path) not in caught.value.detail


@pytest.mark.parametrize("backend", [None, "pyav"])
def test_truncated_file_with_its_index_first_fails_when_read(tmp_path, backend):
    whole = faststart_copy(CLIPS / "carphone_pristine.mp4", tmp_path / "whole.mp4")
    cut = _write(tmp_path / "cut.mp4", whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(VideoReadError) as caught:
        with open_video(cut, backend=backend) as reader:
            reader.frames(range(reader.num_frames))
    assert caught.value.reason == "unreadable"


def test_missing_file(tmp_path):
    with pytest.raises(VideoReadError) as caught:
        open_video(tmp_path / "nothing.mp4")
    assert (caught.value.reason, caught.value.detail) == ("missing", "no such file")
