"""Video files: reading frames (with their timestamps) and writing frames, GIF by Pillow and the rest by PyAV.

The loop that segments a video frame by frame is `cli.segment.segment_video`.

Shape glossary
    H, W: frame height and width

Animated GIFs are read and written with Pillow alone. Every other container goes through PyAV (FFmpeg's libraries
in-process), the optional extra `pip install "minimaskrcnn[video]"`: it decodes what FFmpeg decodes (the MS-MPEG4v3
street video of the tests included), gives each frame its own timestamp, and writes H.264 (.mp4, .mkv, .mov), MPEG-4
part 2 (.avi) or VP9 (.webm).

A writer's `extend_last` lets a frame stand for the input frames skipped after it (a GIF frame lasts longer; the
other containers are written at the input frame rate divided by the selection step), so the output plays in real
time.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from fractions import Fraction
from typing import Iterator, Optional

import numpy as np
from PIL import Image, ImageSequence

from minimaskrcnn.image import pil_to_rgb

__all__ = ["VideoReadError", "VideoExtraMissing", "Frame", "VideoInfo", "open_video", "VideoWriter",
           "check_support"]

PILLOW_EXTENSIONS = (".gif",)
# output extension -> (container format, encoders to try in order); FFmpeg picks the container from the name
FFMPEG_WRITERS = {".mp4": ("libx264", "mpeg4"), ".m4v": ("libx264", "mpeg4"), ".mov": ("libx264", "mpeg4"),
                  ".mkv": ("libx264", "mpeg4"), ".avi": ("mpeg4",), ".webm": ("libvpx-vp9", "libvpx")}
GIF_DEFAULT_MS = 100       # browsers show GIF frames of 0 or 10 ms for 100 ms


class VideoReadError(ValueError):
    """A video that cannot be opened or decoded; the message is one line "<file>: <why>"."""


class VideoExtraMissing(ImportError):
    """PyAV is not installed; the message says how to install it."""


@dataclass
class Frame:
    index: int             # position in the input, from 0
    time: float            # presentation time in seconds
    duration: float        # seconds this frame is shown (GIF), or 1 / fps
    image: np.ndarray      # (H, W, 3) uint8 RGB


@dataclass
class VideoInfo:
    fps: Fraction
    frame_count: Optional[int]     # None when the container does not say
    width: int
    height: int


def _is_gif(path) -> bool:
    return os.path.splitext(os.fspath(path))[1].lower() in PILLOW_EXTENSIONS


def _import_av(path, doing: str):
    try:
        import av
    except ImportError:
        raise VideoExtraMissing(f"{path}: {doing} {os.path.splitext(os.fspath(path))[1] or 'this file'} needs PyAV: "
                                f'pip install "minimaskrcnn[video]"') from None
    return av


def check_support(src, dst) -> None:
    """Fail early, before a model is loaded, if `dst` has an unknown extension or PyAV is needed and missing."""
    ext = os.path.splitext(os.fspath(dst))[1].lower()
    if ext not in PILLOW_EXTENSIONS and ext not in FFMPEG_WRITERS:
        known = ", ".join(sorted(PILLOW_EXTENSIONS + tuple(FFMPEG_WRITERS)))
        raise ValueError(f"{dst}: unknown video format {ext or '(no extension)'}; use one of {known}")
    if not _is_gif(src):
        _import_av(src, "reading")
    if ext not in PILLOW_EXTENSIONS:
        _import_av(dst, "writing")


def open_video(path) -> tuple:
    """(VideoInfo, iterator of Frame) for a GIF (Pillow) or any FFmpeg-readable video (PyAV)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise VideoReadError(f"{path}: {'is a directory' if os.path.isdir(path) else 'no such file'}")
    return _open_gif(path) if _is_gif(path) else _open_ffmpeg(path)


def _open_gif(path: str) -> tuple:
    try:
        img = Image.open(path)
        img.load()
    except Exception as e:  # Pillow raises many types for corrupt data
        raise VideoReadError(f"{path}: cannot decode: {' '.join(str(e).split()) or type(e).__name__}") from None
    try:
        durations = [(frame.info.get("duration") or GIF_DEFAULT_MS) / 1000 for frame in ImageSequence.Iterator(img)]
    except Exception as e:
        raise VideoReadError(f"{path}: cannot decode: {' '.join(str(e).split()) or type(e).__name__}") from None
    fps = Fraction(len(durations)) / Fraction(sum(durations)).limit_denominator(1000)
    info = VideoInfo(fps, len(durations), img.width, img.height)

    def frames() -> Iterator[Frame]:
        t = 0.0
        with img:
            for i, frame in enumerate(ImageSequence.Iterator(img)):
                yield Frame(i, t, durations[i], pil_to_rgb(frame.copy()))
                t += durations[i]
    return info, frames()


def _open_ffmpeg(path: str) -> tuple:
    av = _import_av(path, "reading")
    try:
        container = av.open(path)
    except av.FFmpegError as e:
        raise VideoReadError(f"{path}: cannot open as a video: {e.strerror or e}") from None
    if not container.streams.video:
        container.close()
        raise VideoReadError(f"{path}: no video stream")
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    fps = Fraction(rate).limit_denominator(100000) if rate else Fraction(25)
    info = VideoInfo(fps, stream.frames or None, stream.codec_context.width, stream.codec_context.height)

    def frames() -> Iterator[Frame]:
        i = 0
        try:
            for frame in container.decode(stream):
                t = float(frame.time) if frame.time is not None else i / float(fps)
                yield Frame(i, t, 1 / float(fps), frame.to_ndarray(format="rgb24"))
                i += 1
        except av.FFmpegError as e:
            raise VideoReadError(f"{path}: cannot decode frame {i}: {e.strerror or e}") from None
        finally:
            container.close()
    return info, frames()


class VideoWriter:
    """Write (H, W, 3) uint8 frames to a GIF (Pillow) or a video (PyAV, encoder by extension) at `fps`.

    Frames of odd width or height are padded by one replicated row/column for the 4:2:0 encoders.
    `write(frame, duration)`: duration in seconds, used by GIF only.
    """

    def __init__(self, path, fps: Fraction):
        self.path, self.fps = os.fspath(path), Fraction(fps).limit_denominator(100000)
        self._gif = _is_gif(self.path)
        self._frames, self._durations = [], []
        self._container = self._stream = None

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        self.close(finish=exc_type is None)

    def write(self, frame: np.ndarray, duration: Optional[float] = None) -> None:
        if self._gif:
            # quantize now: one byte per pixel held until close
            self._frames.append(Image.fromarray(frame).quantize(256, method=Image.Quantize.FASTOCTREE))
            self._durations.append(int(round(1000 * (duration or 1 / float(self.fps)))))
            return
        if self._stream is None:
            self._start(frame.shape[0], frame.shape[1])
        h, w = frame.shape[:2]
        frame = np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")   # (H', W', 3) even sides
        vf = self._av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
        for packet in self._stream.encode(vf):
            self._container.mux(packet)

    def extend_last(self, duration: float) -> None:
        """Show the last written frame `duration` seconds longer (GIF; a video's rate is fixed at fps)."""
        if self._gif and self._durations:
            self._durations[-1] += int(round(1000 * duration))

    def _start(self, h: int, w: int) -> None:
        self._av = av = _import_av(self.path, "writing")
        ext = os.path.splitext(self.path)[1].lower()
        codec = next((c for c in FFMPEG_WRITERS[ext] if _has_encoder(av, c)), None)
        if codec is None:
            raise ValueError(f"{self.path}: this FFmpeg build has none of the encoders {FFMPEG_WRITERS[ext]}")
        self._container = av.open(self.path, mode="w")
        self._stream = self._container.add_stream(codec, rate=self.fps)
        self._stream.width, self._stream.height = w + w % 2, h + h % 2
        self._stream.pix_fmt = "yuv420p"
        if codec == "mpeg4":                                         # FFmpeg's default 200 kbit/s is blocky
            self._stream.bit_rate = max(1_000_000, int(0.3 * w * h * float(self.fps)))
        elif codec.startswith("libvpx"):                             # constant quality, as x264's default crf 23
            self._stream.options = {"crf": "31", "b": "0"}

    def close(self, finish: bool = True) -> None:
        if self._gif:
            if finish and self._frames:
                self._frames[0].save(self.path, format="GIF", save_all=True, append_images=self._frames[1:],
                                     duration=self._durations, loop=0)
            self._frames = []
            return
        if self._container is not None:
            try:
                if finish:
                    for packet in self._stream.encode():               # flush the encoder
                        self._container.mux(packet)
            finally:
                self._container.close()
                self._container = None


def _has_encoder(av, name: str) -> bool:
    try:
        av.codec.Codec(name, "w")
        return True
    except Exception:  # av raises UnknownCodecError (a ValueError) or FFmpeg errors, depending on the version
        return False

