"""Clips in, 3-D clips out: one face tracked through a video, smoothed, inverted in batches, re-rendered.

  media.py    decoding (PyAV: whatever FFmpeg reads), incremental H.264 writing, audio copy into MP4
  filters.py  One-Euro filters on the 5 alignment points and on the camera (the smoothing, documented there)
  track.py    FaceTracker: per-frame detection, matching to the tracked face, re-detection, smoothed crop + camera
  invert.py   invert_video: batches, the output videos and result.json, the per-frame cache that resumes a run
  synth.py    a synthetic hand-held clip with known motion, made from one photo (tests and benchmarks)
"""
from goae.video.filters import CameraFilter, LandmarkFilter, OneEuroFilter, SmoothingOptions
from goae.video.invert import FrameCache, VideoOptions, VideoProgress, default_cache_dir, invert_video
from goae.video.media import VIDEO_SUFFIXES, DecodedFrame, VideoEncoder, VideoError, VideoInfo, add_audio, \
    decode_frames, is_video_path, iter_frames, probe
from goae.video.track import NO_FACE, OK, FaceTracker, TrackedFrame

__all__ = ["invert_video", "VideoOptions", "VideoProgress", "FrameCache", "default_cache_dir", "FaceTracker",
           "TrackedFrame", "OK", "NO_FACE", "SmoothingOptions", "OneEuroFilter", "LandmarkFilter", "CameraFilter",
           "probe", "iter_frames", "decode_frames", "DecodedFrame", "is_video_path", "add_audio", "VideoEncoder",
           "VideoInfo", "VideoError", "VIDEO_SUFFIXES"]
