"""Test media made on the fly with PyAV."""

from pathlib import Path

import av
import numpy as np


def write_video(
    path: Path, frames: np.ndarray, codec: str, fps: int = 25, pix_fmt: str = "yuv420p", **stream_options
) -> Path:
    """Encode RGB frames with PyAV: the formats the bundled clips do not cover."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps, options={k: str(v) for k, v in stream_options.items()})
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = pix_fmt
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return path
