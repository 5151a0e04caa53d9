"""Reading fMRI arrays and writing videos, atomically.

Writers put the file at a temporary sibling name and rename it into place, so an error never leaves a partial
output behind. ``.mp4`` is written with PyAV (H.264, yuv420p), ``.gif`` with imageio/Pillow, ``.npy`` with numpy.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from mindvideo.errors import MindVideoError
from mindvideo.fsutil import temp_file

VIDEO_SUFFIXES = (".mp4", ".gif", ".npy")
FMRI_SUFFIXES = (".npy", ".npz")


def read_fmri_array(path: str | Path) -> np.ndarray:
    """A ``.npy`` array or an ``.npz`` (key ``fmri``, else its only array)."""
    path = Path(path)
    if not path.is_file():
        raise MindVideoError(f"expected an fMRI file at {path}", "no such file", "check the path")
    if path.suffix not in FMRI_SUFFIXES:
        raise MindVideoError(
            f"expected an fMRI array file ({', '.join(FMRI_SUFFIXES)})",
            path.suffix or "no suffix",
            "convert the data with `mindvideo data prepare`",
        )
    try:
        if path.suffix == ".npy":
            return np.load(path, allow_pickle=False)
        with np.load(path, allow_pickle=False) as archive:
            keys = list(archive.keys())
            if "fmri" in keys:
                return archive["fmri"]
            if len(keys) == 1:
                return archive[keys[0]]
    except (OSError, ValueError, EOFError) as exc:
        raise MindVideoError(
            f"expected a readable numpy file at {path}", f"{type(exc).__name__}: {exc}", "re-save it with numpy.save"
        ) from None
    raise MindVideoError(f"expected an 'fmri' array (or a single array) in {path}", f"keys {keys}", "rename the key")


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yields a temporary sibling path (same suffix) that is renamed to ``path`` if the block succeeds."""
    path = Path(path)
    tmp = temp_file(path)  # the mode of a new file under the umask, not mkstemp's 0600
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def check_video_path(path: str | Path) -> Path:
    path = Path(path)
    if path.suffix not in VIDEO_SUFFIXES:
        raise MindVideoError(
            f"expected an output path ending in {', '.join(VIDEO_SUFFIXES)}", str(path), "change the suffix of --out"
        )
    return path


def write_video(path: str | Path, frames: np.ndarray, fps: float = 3.0) -> Path:
    """Write ``(F, H, W, 3)`` uint8 frames to ``.mp4`` / ``.gif`` (or the raw array to ``.npy``)."""
    path = check_video_path(path)
    with atomic_path(path) as tmp:
        if path.suffix == ".npy":
            np.save(tmp, frames)
        elif path.suffix == ".gif":
            import imageio.v3 as iio

            iio.imwrite(tmp, frames, extension=".gif", duration=1000.0 / fps, loop=0)
        else:
            _write_mp4(tmp, frames, fps)
    return path


def _write_mp4(path: Path, frames: np.ndarray, fps: float) -> None:
    import fractions

    import av

    _, h, w, _ = frames.shape
    if h % 2 or w % 2:  # yuv420p needs even sizes
        frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fractions.Fraction(fps).limit_denominator(1000))
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.options = {"crf": "18"}
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")))
        container.mux(stream.encode())


def write_videos(path: str | Path, videos: np.ndarray, fps: float = 3.0) -> list[Path]:
    """Write a batch ``(B, F, H, W, 3)``: ``path`` itself for B = 1, else ``stem_000.suffix`` …"""
    path = check_video_path(path)
    if len(videos) == 1:
        return [write_video(path, videos[0], fps)]
    return [write_video(path.with_name(f"{path.stem}_{i:03d}{path.suffix}"), v, fps) for i, v in enumerate(videos)]
