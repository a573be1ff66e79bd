"""Streaming frame source: video files, image sequences and single images, decoded with PyAV.

Frames are yielded one at a time (memory stays bounded for long clips). Each ``Frame`` carries its source index (the
position in the decoded stream, before striding), its presentation time in seconds (kept as-is for variable frame
rate clips), and an RGB uint8 image already downscaled to the resolution cap. ``FrameSource.scale`` is the factor
applied to the source pixels; intrinsics given for the source resolution must be multiplied by it
(``camera.Intrinsics.scaled``).
"""
from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Optional

import numpy as np

from ..contracts.conventions import IMAGE_EXTENSIONS, parse_frame_slice
from .errors import TrackingInputError



@dataclass(frozen=True)
class FrameRange:
    """Python-slice selection ``start:stop:step`` over 0-based source frame indices (stop exclusive).

    Negative ``start``/``stop`` count from the end and need the frame count (``resolve``).
    """

    start: Optional[int] = None
    stop: Optional[int] = None
    step: int = 1

    @classmethod
    def parse(cls, spec) -> "FrameRange":
        """Parse ``"A:B:STEP"`` (any part optional) or a single index with ``conventions.parse_frame_slice``."""
        if isinstance(spec, slice):
            sl = spec
        else:
            try:
                sl = parse_frame_slice(None if spec is None else str(spec))
            except ValueError as e:
                raise TrackingInputError(str(e), "Use --frames START:STOP:STEP, e.g. 0:125:1.") from None
        return cls(sl.start, sl.stop, sl.step or 1)

    def resolve(self, n_frames: Optional[int]) -> "FrameRange":
        """Turn negative bounds into absolute ones (needs the clip length)."""
        if (self.start is None or self.start >= 0) and (self.stop is None or self.stop >= 0):
            return FrameRange(self.start or 0, self.stop, self.step)
        if not n_frames:
            raise TrackingInputError("negative --frames bounds need a clip whose frame count is known",
                                     "Give non-negative START:STOP.")
        a, b, _ = slice(self.start, self.stop, self.step).indices(n_frames)
        return FrameRange(a, b, self.step)

    def contains(self, i: int) -> bool:
        a = self.start or 0
        return i >= a and (self.stop is None or i < self.stop) and (i - a) % self.step == 0

    def done(self, i: int) -> bool:
        """True when no index >= i can be selected any more."""
        return self.stop is not None and i >= self.stop

    def __str__(self) -> str:
        f = lambda v: "" if v is None else str(v)  # noqa: E731
        return f"{f(self.start)}:{f(self.stop)}:{self.step}"


@dataclass
class Frame:
    index: int          # source frame index (before striding)
    time: float         # presentation time in seconds
    image: np.ndarray   # (H, W, 3) uint8 RGB, after the resolution cap


@dataclass
class SourceInfo:
    kind: str                   # "video" | "images" | "image"
    width: int                  # source size (before the cap)
    height: int
    fps: float                  # nominal (average) rate; 0 for a single image
    n_frames: Optional[int]     # container estimate (None/0 when unknown)
    scale: float                # output = source * scale
    out_width: int
    out_height: int


def _cap_scale(w: int, h: int, max_size: Optional[int]) -> float:
    if not max_size or max(w, h) <= max_size:
        return 1.0
    return float(max_size) / float(max(w, h))


def _resize(img: np.ndarray, out_w: int, out_h: int) -> np.ndarray:
    if img.shape[1] == out_w and img.shape[0] == out_h:
        return img
    import cv2
    return cv2.resize(img, (out_w, out_h), interpolation=cv2.INTER_AREA)


def _fit(img: np.ndarray, out_w: int, out_h: int) -> np.ndarray:
    """``img`` scaled to fit inside out_w x out_h with its aspect ratio kept, centred on black (never stretched)."""
    h, w = img.shape[:2]
    s = min(out_w / w, out_h / h)
    fw, fh = max(1, min(out_w, int(round(w * s)))), max(1, min(out_h, int(round(h * s))))
    canvas = np.zeros((out_h, out_w, 3), np.uint8)
    x0, y0 = (out_w - fw) // 2, (out_h - fh) // 2
    canvas[y0:y0 + fh, x0:x0 + fw] = _resize(img, fw, fh)
    return canvas


def _to_rgb(frame) -> np.ndarray:
    """PyAV VideoFrame -> (H, W, 3) uint8 RGB (handles gray, alpha, 16-bit, yuvj, palette)."""
    arr = frame.to_ndarray(format="rgb24")
    return np.ascontiguousarray(arr)


def _natural_key(p: str):
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", p)]


def list_image_sequence(path: str) -> List[str]:
    """Files of an image sequence: a directory (all images, natural order), a glob pattern, or a printf pattern."""
    if os.path.isdir(path):
        files = [os.path.join(path, f) for f in os.listdir(path) if Path(f).suffix.lower() in IMAGE_EXTENSIONS]
    elif "%" in path:
        d = os.path.dirname(path) or "."
        rx = re.compile("^" + re.sub(r"%0?(\d*)d", lambda m: r"\d" + ("{%s}" % m.group(1) if m.group(1) else "+"),
                                     re.escape(os.path.basename(path)).replace(r"\%", "%")) + "$")
        files = [os.path.join(d, f) for f in os.listdir(d) if rx.match(f)] if os.path.isdir(d) else []
    else:
        files = [f for f in glob.glob(path) if Path(f).suffix.lower() in IMAGE_EXTENSIONS]
    return sorted(files, key=_natural_key)


class FrameSource:
    """Iterate frames of ``path`` lazily.

    Args:
        path: video file, single image, directory of images, glob (``frames/*.png``) or printf pattern
            (``frames/%04d.png``).
        frames: frame selection (``FrameRange`` or its string form).
        max_size: cap on the longer side of the output images (None: keep the source size).
        fps: frame rate to assume for image sequences (timestamps = index / fps).
    """

    def __init__(self, path, frames=None, max_size: Optional[int] = 512, fps: float = 25.0):
        self.path = str(path)
        self.range = frames if isinstance(frames, FrameRange) else FrameRange.parse(frames)
        self.max_size = max_size
        self.seq_fps = float(fps)
        self._files: Optional[List[str]] = None
        self.warnings: List[tuple] = []  # (code, message) found while decoding, once each; the caller reports them
        self.stream_end: Optional[int] = None  # frames in the video stream when decoding reached its end
        if not os.path.exists(self.path) and not any(c in self.path for c in "*?[%"):
            raise TrackingInputError(f"input not found: {self.path}")
        ext = Path(self.path).suffix.lower()
        if os.path.isdir(self.path) or any(c in self.path for c in "*?[%"):
            self.kind = "images"
            self._files = list_image_sequence(self.path)
            if not self._files:
                raise TrackingInputError(f"no images found for {self.path!r} (supported: {sorted(IMAGE_EXTENSIONS)})")
        elif ext in IMAGE_EXTENSIONS:
            self.kind = "image"
            self._files = [self.path]
        else:
            self.kind = "video"
        if os.path.isfile(self.path) and os.path.getsize(self.path) == 0:
            raise TrackingInputError(f"input file is empty (0 bytes): {self.path}")
        if self.kind == "video":
            self.info = self._probe()
            needs_count = (self.range.start or 0) < 0 or (self.range.stop is not None and self.range.stop < 0)
            if needs_count and not self.info.n_frames:
                self.info.n_frames = self._count_frames()
            self.range = self.range.resolve(self.info.n_frames)
        else:
            self.range = self.range.resolve(len(self._files))
            self.info = self._probe()

    # -- probing --------------------------------------------------------------------------------------------------
    def _open(self, p: str):
        import av
        try:
            return av.open(p)
        except Exception as e:  # av.error.InvalidDataError, FileNotFoundError, ...
            raise TrackingInputError(f"cannot open {p!r} as video/image: {e}") from e

    def _probe(self) -> SourceInfo:
        if self.kind == "video":
            c = self._open(self.path)
            try:
                if not c.streams.video:
                    raise TrackingInputError(f"{self.path!r} has no video stream")
                s = c.streams.video[0]
                w, h = s.codec_context.width, s.codec_context.height
                fps = float(s.average_rate) if s.average_rate else 0.0
                n = int(s.frames) if s.frames else None
                if not w or not h:  # some containers only know the size after decoding
                    first = self._first_frame_video(c, s)
                    h, w = first.shape[:2]
            finally:
                c.close()
            sc = _cap_scale(w, h, self.max_size)
            return SourceInfo("video", w, h, fps, n, sc, int(round(w * sc)), int(round(h * sc)))
        img = self._read_image(self._files[min(self.range.start, len(self._files) - 1)]
                               if self.kind == "images" else self._files[0])
        h, w = img.shape[:2]
        sc = _cap_scale(w, h, self.max_size)
        fps = self.seq_fps if self.kind == "images" else 0.0
        return SourceInfo(self.kind, w, h, fps, len(self._files), sc, int(round(w * sc)), int(round(h * sc)))

    def _count_frames(self) -> int:
        """Count video packets by demuxing only (no decoding)."""
        c = self._open(self.path)
        try:
            return sum(1 for p in c.demux(c.streams.video[0]) if p.size)
        finally:
            c.close()

    def _first_frame_video(self, c, s) -> np.ndarray:
        try:
            for f in c.decode(s):
                return _to_rgb(f)
        except Exception as e:
            raise TrackingInputError(f"cannot decode {self.path!r}: {e}") from e
        raise TrackingInputError(f"{self.path!r} contains no frames (zero-length clip)")

    def _read_image(self, p: str) -> np.ndarray:
        c = self._open(p)
        try:
            s = c.streams.video[0] if c.streams.video else None
            if s is None:
                raise TrackingInputError(f"{p!r} is not an image")
            for f in c.decode(s):
                return _to_rgb(f)
        except TrackingInputError:
            raise
        except Exception as e:
            raise TrackingInputError(f"cannot decode image {p!r}: {e}") from e
        finally:
            c.close()
        raise TrackingInputError(f"cannot decode image {p!r}: no picture")

    # -- iteration ------------------------------------------------------------------------------------------------
    @property
    def scale(self) -> float:
        return self.info.scale

    @property
    def size(self):
        """Output (width, height)."""
        return self.info.out_width, self.info.out_height

    def _warn(self, code: str, message: str) -> None:
        if all(c != code for c, _ in self.warnings):
            self.warnings.append((code, message))

    def _emit(self, index: int, t: float, img: np.ndarray) -> Frame:
        ow, oh = self.info.out_width, self.info.out_height
        if img.shape[1] != self.info.width or img.shape[0] != self.info.height:
            # The camera model assumes one image size: fit (never stretch) into the first frame's size.
            what = "images of different sizes" if self.kind == "images" else "frames whose size changes"
            self._warn("mixed_image_sizes",
                       f"{self.path} holds {what}: frame {index} is {img.shape[1]}x{img.shape[0]}, the first "
                       f"is {self.info.width}x{self.info.height}; such frames are scaled to fit and padded, not "
                       "stretched. Give every frame the same size for an accurate camera.")
            return Frame(index, float(t), _fit(img, ow, oh))
        return Frame(index, float(t), _resize(img, ow, oh))

    def __iter__(self) -> Iterator[Frame]:
        if self.kind == "video":
            yield from self._iter_video()
        else:
            yield from self._iter_images()

    def _iter_images(self) -> Iterator[Frame]:
        fps = self.seq_fps if self.seq_fps > 0 else 25.0
        for i, p in enumerate(self._files):
            if self.range.done(i):
                break
            if self.range.contains(i):
                yield self._emit(i, i / fps, self._read_image(p))

    def _iter_video(self) -> Iterator[Frame]:
        import av
        c = self._open(self.path)
        n_out = 0
        try:
            s = c.streams.video[0]
            s.thread_type = "AUTO"
            fps = self.info.fps if self.info.fps > 0 else 25.0
            i = -1
            last_t = None
            stopped = False
            try:
                for f in c.decode(s):
                    i += 1
                    if self.range.done(i):
                        stopped = True
                        break
                    if not self.range.contains(i):
                        continue
                    t = f.time if f.time is not None else (i / fps)
                    if last_t is not None and t <= last_t:  # broken/duplicate pts: keep time monotonic
                        t = last_t + 1.0 / fps
                    last_t = t
                    n_out += 1
                    yield self._emit(i, t, _to_rgb(f))
            except av.error.FFmpegError as e:
                if n_out == 0 and i < 0:
                    raise TrackingInputError(f"cannot decode {self.path!r}: {e}") from e
                # corruption mid-stream: stop here, keep what was decoded
                self._warn("decode_error", f"decoding stopped at frame {i + 1} of {self.path}: {e}; the frames "
                                           "after it are missing")
            if not stopped:
                self.stream_end = i + 1
                if self.info.n_frames and self.stream_end < self.info.n_frames:
                    self._warn("truncated_clip",
                               f"{self.path} ends after {self.stream_end} frames although its container "
                               f"announces {self.info.n_frames}: the file looks truncated (an interrupted copy "
                               "or recording), so the frames after it are missing. Re-export or re-copy the clip "
                               "to track them.")
        finally:
            c.close()
        if i < 0:
            raise TrackingInputError(f"{self.path!r} contains no frames (zero-length clip)")
