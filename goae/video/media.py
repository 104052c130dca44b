"""Video files in and out with PyAV: decoding any clip FFmpeg reads, incremental H.264 writing, audio copy.

Input: whatever PyAV decodes (MP4, MOV, WebM, MKV, AVI...), from regular files only (a FIFO would block the
reader forever). The first video stream is decoded frame by frame (never the whole clip in memory), turned
upright from its display matrix (phone clips), as RGB.

Every number a file declares is bounded before it sizes anything (a 10 KB file can claim 1e9 frames/s): the
frame rate must lie in [MIN_FPS, MAX_FPS] (the average rate, else the guessed one; otherwise VideoError), the
frame size within goae.align's MAX_PIXELS, the duration and frame count within MAX_SECONDS / MAX_FRAMES (else
"unknown"). Time stamps are the source's own (variable frame rates are kept), except where they cannot be
used: missing, not finite, not at least 1/MAX_FPS after the previous frame, or beyond MAX_SECONDS; such a
frame is placed 1/fps after the previous one and marked `retimed`.

Output: `VideoEncoder` writes frames as they come, with the encoding of goae.export.write_video (H.264
High, yuv420p, BT.709 tags, +faststart, even sizes by edge padding), each at its own time stamp (no
B-frames: x264 gives them evenly spaced decode times, which MP4 would turn into wrong durations when the
frame rate varies). `add_audio` then copies the source's
first audio stream into it: packets as they are when MP4 can hold the codec (AAC, MP3, Opus, FLAC, ALAC,
AC-3), otherwise (Vorbis, PCM, ...) re-encoded to AAC; the audio is aligned to the first video frame and
cut at the end of the video.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import numpy as np

from goae.align.image import MAX_PIXELS
from goae.io import atomic_path, check_regular_file, one_line

VIDEO_SUFFIXES = (".mp4", ".mov", ".m4v", ".webm", ".mkv", ".avi", ".mpg", ".mpeg", ".ts", ".mts", ".3gp", ".flv",
                  ".wmv", ".ogv")
MP4_AUDIO = ("aac", "mp3", "opus", "flac", "alac", "ac3", "eac3")
DEFAULT_FPS = 25.0
MIN_FPS, MAX_FPS = 0.01, 1000.0      # frame rates goae accepts; outside them a file is damaged or hostile
MAX_SECONDS = 24 * 3600.0            # time stamps and durations beyond a day are not trusted
MAX_FRAMES = 10_000_000              # declared frame counts above this are not trusted
MAX_FRAME_SECONDS = 60.0             # the longest a (last) frame may declare to last
MIN_SAMPLE_RATE, MAX_SAMPLE_RATE = 1000, 384_000
TIME_BASE = Fraction(1, 90000)       # output time stamps (MPEG's 90 kHz clock: exact for 24, 25, 30000/1001...)


class VideoError(ValueError):
    """A clip that cannot be read (not a video, no video stream, undecodable)."""


@dataclass
class VideoInfo:
    path: str
    width: int
    height: int
    fps: Fraction                 # average frame rate (DEFAULT_FPS when the file gives none), in [MIN_FPS, MAX_FPS]
    frames: int | None            # frame count from the header, or estimated from the duration; None if unknown
    duration: float | None        # seconds
    audio_codec: str | None       # the first audio stream's codec, or None


def is_video_path(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def _open(path):
    import av
    try:
        check_regular_file(path, "clip")
    except ValueError as e:
        raise VideoError(str(e)) from None
    try:
        return av.open(str(path))
    except (av.FFmpegError, OSError, ValueError) as e:
        if isinstance(e, FileNotFoundError) or (isinstance(e, OSError) and getattr(e, "errno", None) == 2):
            raise FileNotFoundError(2, "No such file or directory", str(path)) from None
        raise VideoError(f"{path} could not be opened as a video: {one_line(str(e))}") from None


def _frame_rate(stream, path) -> Fraction:
    """The stream's frame rate: the average one, else the guessed one, if in [MIN_FPS, MAX_FPS]; DEFAULT_FPS
    when it gives none; VideoError when all it gives are out of range (it would size the orbit, the writers)."""
    given = [Fraction(r) for r in (stream.average_rate, stream.guessed_rate) if r]
    for rate in given:
        if MIN_FPS <= rate <= MAX_FPS:
            return rate
    if given:
        raise VideoError(f"{path} declares a frame rate of {float(given[0]):.6g} frames/s; goae reads clips of "
                         f"{MIN_FPS:g} to {MAX_FPS:g} frames/s (the file is damaged or not a real clip)")
    return Fraction(DEFAULT_FPS)


def _check_size(width, height, path) -> None:
    if not (width and height and width > 0 and height > 0):
        raise VideoError(f"{path}: the video stream has no frame size (damaged file)")
    if width * height > MAX_PIXELS:
        raise VideoError(f"{path}: frames of {width}x{height} pixels are too large (at most {MAX_PIXELS:,} "
                         "pixels, as for photos)")


def _seconds(value) -> float | None:
    """A duration or time from the file, or None when it is missing, not finite or out of [0, MAX_SECONDS]."""
    try:
        x = float(value)
    except (TypeError, ValueError, ZeroDivisionError, OverflowError):
        return None
    return x if math.isfinite(x) and 0 <= x <= MAX_SECONDS else None


def probe(path: str | os.PathLike) -> VideoInfo:
    with _open(path) as c:
        if not c.streams.video:
            raise VideoError(f"{path} has no video stream")
        v = c.streams.video[0]
        fps = _frame_rate(v, path)
        width, height = v.codec_context.width, v.codec_context.height
        _check_size(width, height, path)
        duration = _seconds(v.duration * v.time_base) if v.duration and v.time_base else (
            _seconds(c.duration / 1e6) if c.duration else None)
        frames = int(v.frames) if v.frames and 0 < v.frames <= MAX_FRAMES else None
        if frames is None and duration:
            frames = min(MAX_FRAMES, max(1, int(round(duration * float(fps)))))
        audio = c.streams.audio[0].codec_context.name if c.streams.audio else None
        return VideoInfo(str(path), width, height, fps, frames, duration, audio)


@dataclass
class DecodedFrame:
    index: int
    time: float          # seconds from the first frame (the source's time stamp, or retimed: module docstring)
    duration: float      # how long it shows: up to the next frame, or for the last one its own or 1/fps
    image: np.ndarray    # uint8 RGB [H,W,3], upright
    retimed: bool = False


def iter_frames(path: str | os.PathLike, max_frames: int | None = None) -> Iterator[tuple[int, float, np.ndarray]]:
    """(index, time in seconds from the first frame, uint8 RGB [H,W,3]) for each frame of the first video stream."""
    for f in decode_frames(path, max_frames):
        yield f.index, f.time, f.image


def decode_frames(path: str | os.PathLike, max_frames: int | None = None) -> Iterator[DecodedFrame]:
    """The frames of the first video stream with bounded time stamps (module docstring). A clip of which no
    frame decodes (truncated, damaged) is a VideoError, never an empty clip."""
    import av
    with _open(path) as c:
        if not c.streams.video:
            raise VideoError(f"{path} has no video stream")
        stream = c.streams.video[0]
        stream.thread_type = "AUTO"
        fps = _frame_rate(stream, path)
        _check_size(stream.codec_context.width, stream.codec_context.height, path)
        step, min_step = 1 / float(fps), 1 / MAX_FPS
        t0 = prev = last = None
        n = 0
        try:
            for frame in c.decode(stream):
                if max_frames is not None and n >= max_frames:
                    break
                _check_size(frame.width, frame.height, path)   # a stream may change size mid-way
                raw = frame.time if frame.time is not None else None
                raw = float(raw) if raw is not None and math.isfinite(float(raw)) else None
                if t0 is None:
                    t0 = raw if raw is not None else 0.0
                t = None if raw is None else raw - t0
                retimed = not (t is not None and 0 <= t <= MAX_SECONDS and (prev is None or t >= prev + min_step))
                if retimed:
                    t = 0.0 if prev is None else prev + step
                own = _seconds(frame.duration * frame.time_base) if frame.duration and frame.time_base else None
                rgb = frame.to_ndarray(format="rgb24")
                rot = int(round((getattr(frame, "rotation", 0) or 0) / 90)) % 4
                if rot:
                    rgb = np.ascontiguousarray(np.rot90(rgb, k=rot))
                if last is not None:
                    last.duration = t - last.time
                    yield last
                own = own if own is not None and min_step <= own <= MAX_FRAME_SECONDS else step
                last = DecodedFrame(n, t, own, rgb, retimed and prev is not None)
                prev = t
                n += 1
        except av.FFmpegError as e:
            raise VideoError(f"{path}: decoding failed: {one_line(str(e))}") from None
        if last is None:
            raise VideoError(f"{path}: no frame could be decoded: the video is damaged or truncated")
        yield last


class VideoEncoder:
    """Frames in, one at a time, to an H.264 MP4 (the encoding of goae.export.write_video). Use as a context
    manager; the file is complete when the block ends without an exception (the caller writes into a
    temporary folder or path: this class does not make the write atomic).

    `write(frame, time)` places a frame at `time` seconds (increasing; None = 1/fps after the previous one), so a
    variable frame rate is kept; `close(end=...)` says when the last frame ends (default: 1/fps after it)."""

    def __init__(self, path: str | os.PathLike, fps: float | Fraction, crf: int = 18, preset: str = "medium"):
        import av
        self.path = Path(path)
        rate = fps if isinstance(fps, Fraction) else Fraction(float(fps)).limit_denominator(1001)
        if not MIN_FPS <= rate <= MAX_FPS:
            raise ValueError(f"fps must lie in [{MIN_FPS:g}, {MAX_FPS:g}], got {float(rate):g}")
        self._step = 1 / float(rate)
        self._container = av.open(str(self.path), mode="w", format="mp4", options={"movflags": "+faststart"})
        self._stream = self._container.add_stream("libx264", rate=rate)
        self._stream.pix_fmt = "yuv420p"
        self._stream.options = {"crf": str(crf), "preset": preset, "bf": "0"}   # no B-frames: module docstring
        cc = self._stream.codec_context
        cc.time_base = TIME_BASE
        cc.colorspace, cc.color_primaries, cc.color_trc, cc.color_range = 1, 1, 1, 1  # BT.709, tv range
        self._size = None
        self._pts = None          # the last frame's time stamp, in TIME_BASE units
        self._held = None         # the last packet out of the encoder: its duration is known at the next one
        self.frames = 0

    def write(self, frame: np.ndarray, time: float | None = None) -> None:
        import av
        frame = np.asarray(frame)
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise ValueError(f"video frames must be uint8 [H,W,3], got {frame.dtype} {frame.shape}")
        if self._size is None:
            self._size = frame.shape[:2]
            self._stream.height, self._stream.width = (s + s % 2 for s in self._size)
        elif frame.shape[:2] != self._size:
            raise ValueError(f"all frames must have one size: {self._size} then {frame.shape[:2]}")
        if time is None:
            pts = 0 if self._pts is None else self._pts + max(1, round(self._step / TIME_BASE))
        else:
            if not (math.isfinite(time) and 0 <= time <= MAX_SECONDS):
                raise ValueError(f"frame time must be finite seconds in [0, {MAX_SECONDS:g}], got {time!r}")
            pts = round(Fraction(time) / TIME_BASE)
            if self._pts is not None and pts <= self._pts:
                raise ValueError(f"frame times must increase: {float(pts * TIME_BASE)} s after "
                                 f"{float(self._pts * TIME_BASE)} s")
        h, w = self._size
        if h % 2 or w % 2:
            frame = np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
        vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
        vf = vf.reformat(format="yuv420p", dst_colorspace="itu709")
        vf.pts, vf.time_base = pts, TIME_BASE
        self._pts = pts
        self._mux(self._stream.encode(vf))
        self.frames += 1

    def _mux(self, packets) -> None:
        for p in packets:           # in presentation order (no B-frames)
            if self._held is not None:
                self._held.duration = p.pts - self._held.pts
                self._container.mux(self._held)
            self._held = p

    def close(self, ok: bool = True, end: float | None = None) -> None:
        """Finish the file (ok) or just release it; `end`: the time in seconds at which the last frame ends."""
        if self._container is None:
            return
        try:
            if ok:
                if self.frames == 0:
                    raise ValueError("no frames to write")
                self._mux(self._stream.encode(None))
                last = max(1, round(self._step / TIME_BASE))
                end_pts = round(Fraction(end) / TIME_BASE) if end is not None and math.isfinite(end) else None
                if end_pts is not None and end_pts > self._held.pts:
                    last = min(end_pts - self._held.pts, round(MAX_FRAME_SECONDS / TIME_BASE))
                self._held.duration = last
                self._container.mux(self._held)
                self._held = None
        finally:
            self._container.close()
            self._container = None

    def __enter__(self) -> "VideoEncoder":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(ok=exc_type is None)


def _video_start(src) -> float:
    v = src.streams.video[0] if src.streams.video else None
    if v is not None and v.start_time is not None and v.time_base:
        start = float(v.start_time * v.time_base)
        return start if math.isfinite(start) and abs(start) <= MAX_SECONDS else 0.0
    return 0.0


def add_audio(video: str | os.PathLike, source: str | os.PathLike, out: str | os.PathLike) -> str | None:
    """Write `out` (atomically): the video stream of `video` plus the first audio stream of `source`
    (module docstring). -> 'copied', 'transcoded to aac', or None when `source` has no audio (then
    `out` is not written)."""
    import av

    with av.open(str(source)) as src:
        if not src.streams.audio:
            return None
        start = _video_start(src)
        rate = src.streams.audio[0].codec_context.sample_rate
        if rate and not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
            raise VideoError(f"{source}: an audio sample rate of {rate} Hz is out of range")
        with av.open(str(video)) as vid:
            vin = vid.streams.video[0]
            end = float(vin.duration * vin.time_base) if vin.duration else None
            if end is None and vin.frames and vin.average_rate:
                end = vin.frames / float(vin.average_rate)
            with atomic_path(out) as tmp:
                with av.open(str(tmp), mode="w", format="mp4", options={"movflags": "+faststart"}) as dst:
                    vout = dst.add_stream_from_template(vin)
                    ain = src.streams.audio[0]
                    copy = ain.codec_context.name in MP4_AUDIO
                    if copy:
                        aout = dst.add_stream_from_template(ain)
                        audio = _copied_audio(src, ain, aout, start, end)
                    else:
                        aout = dst.add_stream("aac", rate=ain.codec_context.sample_rate or 48000)
                        audio = _transcoded_audio(src, ain, aout, start, end)
                    video_packets = ((float(p.pts * p.time_base) if p.pts is not None else 0.0, p)
                                     for p in vid.demux(vin) if p.dts is not None)
                    for pkt, stream in _merge(video_packets, audio, vout):
                        if stream is not None:
                            pkt.stream = stream
                        dst.mux(pkt)
                    for pkt in aout.encode(None) if not copy else ():
                        dst.mux(pkt)
    return "copied" if copy else "transcoded to aac"


def _merge(video, audio, vout):
    """Interleave (time, packet) streams by time; yields (packet, stream to assign or None)."""
    v, a = next(video, None), next(audio, None)
    while v is not None or a is not None:
        if a is None or (v is not None and v[0] <= a[0]):
            yield v[1], vout
            v = next(video, None)
        else:
            yield a[1], None
            a = next(audio, None)


def _copied_audio(src, ain, aout, start: float, end: float | None):
    tb = ain.time_base
    shift = int(round(start / tb)) if tb else 0
    for pkt in src.demux(ain):
        if pkt.dts is None or pkt.pts is None:
            continue
        pkt.pts -= shift
        pkt.dts -= shift
        t = float(pkt.pts * tb)
        if t + float((pkt.duration or 0) * tb) <= 0:
            continue                                      # before the first video frame
        if end is not None and t >= end:
            break
        pkt.stream = aout
        yield t, pkt


def _transcoded_audio(src, ain, aout, start: float, end: float | None):
    import av
    rate = aout.codec_context.sample_rate
    resampler = av.AudioResampler(format="fltp", layout=ain.codec_context.layout.name if ain.codec_context.layout
                                  else "stereo", rate=rate, frame_size=1024)
    n = None
    for frame in src.decode(ain):
        t = float(frame.time) - start if frame.time is not None else None
        for out in resampler.resample(frame):
            if n is None:
                n = max(0, int(round((t or 0.0) * rate)))
            out.pts, out.time_base = n, Fraction(1, rate)
            n += out.samples
            if end is not None and out.pts / rate >= end:
                return
            for pkt in aout.encode(out):
                yield float(pkt.pts * pkt.time_base) if pkt.pts is not None else out.pts / rate, pkt
    for out in resampler.resample(None):
        if n is None:
            n = 0
        out.pts, out.time_base = n, Fraction(1, rate)
        n += out.samples
        for pkt in aout.encode(out):
            yield float(pkt.pts * pkt.time_base) if pkt.pts is not None else out.pts / rate, pkt
