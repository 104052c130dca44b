"""Video files in and out with PyAV: decoding any clip FFmpeg reads, incremental H.264 writing, audio copy.

Input: whatever PyAV decodes (MP4, MOV, WebM, MKV, AVI...). The first video stream is decoded frame by
frame (never the whole clip in memory), turned upright from its display matrix (phone clips), as RGB.

Output: `VideoEncoder` writes frames as they come, with the encoding of goae.export.write_video (H.264
High, yuv420p, BT.709 tags, +faststart, even sizes by edge padding). `add_audio` then copies the source's
first audio stream into it: packets as they are when MP4 can hold the codec (AAC, MP3, Opus, FLAC, ALAC,
AC-3), otherwise (Vorbis, PCM, ...) re-encoded to AAC; the audio is aligned to the first video frame and
cut at the end of the video.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import numpy as np

from goae.io import atomic_path

VIDEO_SUFFIXES = (".mp4", ".mov", ".m4v", ".webm", ".mkv", ".avi", ".mpg", ".mpeg", ".ts", ".mts", ".3gp", ".flv",
                  ".wmv", ".ogv")
MP4_AUDIO = ("aac", "mp3", "opus", "flac", "alac", "ac3", "eac3")
DEFAULT_FPS = 25.0


class VideoError(ValueError):
    """A clip that cannot be read (not a video, no video stream, undecodable)."""


@dataclass
class VideoInfo:
    path: str
    width: int
    height: int
    fps: Fraction                 # average frame rate (DEFAULT_FPS when the file gives none)
    frames: int | None            # frame count from the header, or estimated from the duration; None if unknown
    duration: float | None        # seconds
    audio_codec: str | None       # the first audio stream's codec, or None


def is_video_path(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def _open(path):
    import av
    try:
        return av.open(str(path))
    except (av.FFmpegError, OSError, ValueError) as e:
        if isinstance(e, FileNotFoundError) or (isinstance(e, OSError) and getattr(e, "errno", None) == 2):
            raise FileNotFoundError(2, "No such file or directory", str(path)) from None
        raise VideoError(f"{path} could not be opened as a video: {' '.join(str(e).split())}") from None


def probe(path: str | os.PathLike) -> VideoInfo:
    with _open(path) as c:
        if not c.streams.video:
            raise VideoError(f"{path} has no video stream")
        v = c.streams.video[0]
        rate = v.average_rate or v.guessed_rate or v.base_rate
        fps = Fraction(rate) if rate and float(rate) > 0 else Fraction(DEFAULT_FPS)
        duration = float(v.duration * v.time_base) if v.duration and v.time_base else (
            c.duration / 1e6 if c.duration else None)
        frames = int(v.frames) if v.frames else (int(round(duration * float(fps))) if duration else None)
        audio = c.streams.audio[0].codec_context.name if c.streams.audio else None
        return VideoInfo(str(path), v.codec_context.width, v.codec_context.height, fps, frames, duration, audio)


def iter_frames(path: str | os.PathLike, max_frames: int | None = None) -> Iterator[tuple[int, float, np.ndarray]]:
    """(index, time in seconds from the first frame, uint8 RGB [H,W,3]) for each frame of the first video stream."""
    import av
    with _open(path) as c:
        if not c.streams.video:
            raise VideoError(f"{path} has no video stream")
        stream = c.streams.video[0]
        stream.thread_type = "AUTO"
        fps = float(stream.average_rate or stream.guessed_rate or DEFAULT_FPS)
        t0 = None
        try:
            for i, frame in enumerate(c.decode(stream)):
                if max_frames is not None and i >= max_frames:
                    break
                t = frame.time if frame.time is not None else i / fps
                t0 = t if t0 is None else t0
                rgb = frame.to_ndarray(format="rgb24")
                rot = int(round((getattr(frame, "rotation", 0) or 0) / 90)) % 4
                if rot:
                    rgb = np.ascontiguousarray(np.rot90(rgb, k=rot))
                yield i, float(t - t0), rgb
        except av.FFmpegError as e:
            raise VideoError(f"{path}: decoding failed: {' '.join(str(e).split())}") from None


class VideoEncoder:
    """Frames in, one at a time, to an H.264 MP4 (the encoding of goae.export.write_video). Use as a context
    manager; the file is complete when the block ends without an exception (the caller writes into a
    temporary folder or path: this class does not make the write atomic)."""

    def __init__(self, path: str | os.PathLike, fps: float | Fraction, crf: int = 18, preset: str = "medium"):
        import av
        self.path = Path(path)
        self._container = av.open(str(self.path), mode="w", format="mp4", options={"movflags": "+faststart"})
        rate = fps if isinstance(fps, Fraction) else Fraction(float(fps)).limit_denominator(1001)
        self._stream = self._container.add_stream("libx264", rate=rate)
        self._stream.pix_fmt = "yuv420p"
        self._stream.options = {"crf": str(crf), "preset": preset}
        cc = self._stream.codec_context
        cc.colorspace, cc.color_primaries, cc.color_trc, cc.color_range = 1, 1, 1, 1  # BT.709, tv range
        self._size = None
        self.frames = 0

    def write(self, frame: np.ndarray) -> None:
        import av
        frame = np.asarray(frame)
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise ValueError(f"video frames must be uint8 [H,W,3], got {frame.dtype} {frame.shape}")
        if self._size is None:
            self._size = frame.shape[:2]
            self._stream.height, self._stream.width = (s + s % 2 for s in self._size)
        elif frame.shape[:2] != self._size:
            raise ValueError(f"all frames must have one size: {self._size} then {frame.shape[:2]}")
        h, w = self._size
        if h % 2 or w % 2:
            frame = np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
        vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
        vf = vf.reformat(format="yuv420p", dst_colorspace="itu709")
        self._container.mux(self._stream.encode(vf))
        self.frames += 1

    def close(self, ok: bool = True) -> None:
        if self._container is None:
            return
        try:
            if ok:
                if self.frames == 0:
                    raise ValueError("no frames to write")
                self._container.mux(self._stream.encode(None))
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
        return float(v.start_time * v.time_base)
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
