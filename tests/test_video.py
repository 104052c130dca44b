"""goae.video (issue #17): tracking and smoothing on a synthetic hand-held clip with known motion, the output
videos, held frames, audio, and resuming a killed run.

The clip is made from a real example photo (goae.video.synth; nothing is copied into the repository). The
mechanics tests use `StubPipeline` (the 'inversion' of a crop is the crop itself), so they take seconds; one
slow test runs the small random model end to end.
"""
from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from goae.camera import camera_label, camera_label_degrees, orbit_cameras, yaw_pitch_from_label
from goae.domains import HUMAN
from goae.video import (CameraFilter, FaceTracker, LandmarkFilter, OneEuroFilter, SmoothingOptions, VideoOptions,
                        default_cache_dir, invert_video, iter_frames, probe)
from goae.video.synth import COVERED, OUT_OF_FRAME, handheld_clip, write_clip

N_FRAMES, SIZE, FPS = 16, 384, 25.0
COVERED_FRAMES, OUT_FRAMES = (5,), (10, 11)


class StubPipeline:
    """Stands in for GOAEPipeline where only the video mechanics are tested: the reconstruction of a crop is the
    crop, a view is the crop mirrored. Counts what it inverts."""
    device = torch.device("cpu")
    weights_label = "stub"
    fast_path = None
    domain = HUMAN
    generator = SimpleNamespace(img_resolution=512)   # the size of what it renders (the frame cache checks it)

    @staticmethod
    def orbit_cameras(n_frames, **kwargs):
        return orbit_cameras(n_frames, **kwargs)

    @staticmethod
    def view_camera(yaw, pitch=0.0):
        return camera_label_degrees(yaw, pitch)

    def __init__(self):
        self.calls: list[int] = []

    @property
    def inverted(self) -> int:
        return sum(self.calls)

    def __call__(self, images, cameras, output_type=None):
        x = torch.stack([torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1).float() / 127.5 - 1
                         for im in images])
        self.calls.append(len(images))
        return SimpleNamespace(image=x, planes=x, ws=torch.zeros(len(x), 14, 8), image_depth=x[:, :1],
                               camera=torch.as_tensor(np.asarray(cameras)))

    def render_view(self, result, cameras, output_type=None):
        assert cameras.shape == (result.planes.shape[0], 25)
        return {"image": torch.flip(result.planes, dims=[3])}


# ------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def source(repo_examples, landmarker):
    from goae.align import detect_faces, load_image
    photo = load_image(repo_examples / "astronaut.png")   # any portrait: every checkout has this one
    return photo, max(detect_faces(photo), key=lambda f: f.area)


def _clip(source, **kw):
    photo, face = source
    l, t, r, b = face.box
    args = dict(size=(SIZE, SIZE), n_frames=N_FRAMES, fps=FPS, seed=0, covered=COVERED_FRAMES,
                out_of_frame=OUT_FRAMES, face_box=face.box)
    args.update(kw)
    return handheld_clip(photo, ((l + r) / 2, (t + b) / 2 + 0.1 * (b - t)), 3.2 * (r - l), **args)


@pytest.fixture(scope="module")
def clip(source):
    return _clip(source)


@pytest.fixture(scope="module")
def clip_mp4(clip, tmp_path_factory):
    return write_clip(clip, tmp_path_factory.mktemp("clips") / "clip.mp4")


def _yaw_pitch_deg(camera) -> tuple[float, float]:
    y, p = yaw_pitch_from_label(torch.as_tensor(np.asarray(camera, np.float32))[None])
    return math.degrees(float(y[0])), math.degrees(float(p[0]))


def _decode(path) -> np.ndarray:
    return np.stack([f for _, _, f in iter_frames(path)])


def _streams(path) -> dict:
    import av
    with av.open(str(path)) as c:
        out = {"video": [(s.codec_context.name, s.codec_context.width, s.codec_context.height, float(s.average_rate))
                         for s in c.streams.video],
               "audio": [s.codec_context.name for s in c.streams.audio]}
        if c.streams.audio:
            a = c.streams.audio[0]
            out["audio_seconds"] = float(sum(p.duration or 0 for p in c.demux(a)) * a.time_base)
    return out


# --------------------------------------------------------------------------------------------- filters
def test_one_euro_smooths_noise_and_follows_motion():
    rng = np.random.default_rng(0)
    t = np.arange(100) / 25
    noisy = 5 + rng.normal(0, 1, 100)
    f = OneEuroFilter(min_cutoff=1.0, beta=0.0)
    out = np.array([f([x], ti)[0] for x, ti in zip(noisy, t)])
    assert np.diff(out[20:]).std() < 0.25 * np.diff(noisy[20:]).std()
    # a fast ramp: a high beta follows it with less lag than the plain low-pass
    ramp = np.clip((t - 1) * 40, 0, 40)
    lag = {}
    for beta in (0.0, 1.0):
        f = OneEuroFilter(min_cutoff=1.0, beta=beta)
        out = np.array([f([x], ti)[0] for x, ti in zip(ramp, t)])
        lag[beta] = np.abs(out - ramp).max()
    assert lag[1.0] < 0.3 * lag[0.0]
    # a long gap (no face for a while): the first value after it is taken nearly as it is
    f = OneEuroFilter(1.0, 0.0)
    f([0.0], 0.0)
    assert f([10.0], 5.0)[0] > 9.5


def test_landmark_filter_is_scale_free():
    """The same relative motion is smoothed the same at any face size (speeds are in face sizes per second)."""
    lm = np.array([[0, 0], [10, 0], [5, 5], [1, 9], [9, 9]], np.float64)
    runs = []
    for scale in (1.0, 7.0):
        f = LandmarkFilter(SmoothingOptions())
        out = [f(lm * scale + [i * 0.5 * scale, 0], i / 25) for i in range(20)]
        runs.append(np.array(out) / scale)
    np.testing.assert_allclose(runs[0], runs[1], atol=1e-4)


def test_camera_filter_keeps_a_valid_camera():
    f = CameraFilter(SmoothingOptions())
    rng = np.random.default_rng(0)
    for i in range(30):
        yaw, pitch = 0.3 + rng.normal(0, 0.02), -0.1 + rng.normal(0, 0.02)
        c = camera_label(yaw, pitch).numpy()[0]
        out = f(c, i / 25)
        R = out[:16].reshape(4, 4)[:3, :3].astype(np.float64)
        np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-5)
        assert abs(np.linalg.norm(out[:16].reshape(4, 4)[:3, 3]) - np.linalg.norm(c[:16].reshape(4, 4)[:3, 3])) < 1e-5
        np.testing.assert_array_equal(out[16:], c[16:])
    y, p = _yaw_pitch_deg(out)
    assert abs(y - math.degrees(0.3)) < 1.0 and abs(p - math.degrees(-0.1)) < 1.0
    with pytest.raises(ValueError):
        SmoothingOptions(landmark_min_cutoff=float("nan"))


# -------------------------------------------------------------------------------------------- tracking
def test_tracking_the_synthetic_clip(clip, source):
    """Hidden frames give no face (and no crash); smoothing cuts the camera jitter (the head does not move, so
    every frame-to-frame yaw/pitch change is jitter) and keeps the crop on the true (moving) face."""
    from PIL import Image

    from goae.align import crop_params_from_lm5

    assert clip.hidden == {5: COVERED, 10: OUT_OF_FRAME, 11: OUT_OF_FRAME}
    tracker = FaceTracker()
    frames = [tracker.update(Image.fromarray(f), t) for f, t in zip(clip.frames, clip.times)]
    assert [f.index for f in frames if f.face is None] == [5, 10, 11]
    assert all("no face" in f.note for f in frames if f.face is None)
    pairs = [(a, b) for a, b in zip(frames, frames[1:]) if a.face is not None and b.face is not None]
    d_raw = np.array([np.subtract(_yaw_pitch_deg(b.raw_camera), _yaw_pitch_deg(a.raw_camera)) for a, b in pairs])
    d_smooth = np.array([np.subtract(_yaw_pitch_deg(b.face.camera), _yaw_pitch_deg(a.face.camera)) for a, b in pairs])
    assert (d_smooth.std(0) < 0.5 * d_raw.std(0)).all(), (d_smooth.std(0), d_raw.std(0))
    truth = clip.map_points(source[1].lm5)
    for f in frames:
        if f.face is not None:
            true_box = crop_params_from_lm5(truth[f.index].astype(np.float32), (SIZE, SIZE)).final_box_src
            assert np.abs(np.subtract(f.face.box, true_box)).max() < 8, (f.index, f.face.box, true_box)
            assert f.face.image.size == (512, 512)


def test_face_index_and_redetection(examples_dir, landmarker):
    from PIL import Image

    from goae.align import FaceIndexError, load_image

    group = load_image(examples_dir / "wild" / "t1.jpg")
    shifted = Image.new("RGB", group.size)
    shifted.paste(group, (6, 3))
    empty = load_image(examples_dir / "wild" / "coffee.png").resize(group.size)
    tracker = FaceTracker(face_index=2)
    a, gap, b = (tracker.update(im, t) for t, im in enumerate([group, empty, shifted]))
    assert a.face.face_index == 2 and a.reacquired and a.note is None
    assert gap.face is None
    assert b.face.face_index == 2 and not b.reacquired   # the same face, found again where it was
    np.testing.assert_allclose(np.subtract(b.face.box, a.face.box), [6, 3, 6, 3], atol=3)
    # the tracked face leaves and another appears elsewhere: taken again, filters restarted, said so
    portrait = load_image(examples_dir / "wild" / "obama.jpg")
    left, right = (Image.new("RGB", (2 * portrait.width, portrait.height)) for _ in range(2))
    left.paste(portrait, (0, 0))
    right.paste(portrait, (portrait.width, 0))
    tracker = FaceTracker()
    tracker.update(left, 0.0)
    other = tracker.update(right, 0.04)
    assert other.reacquired and "lost" in other.note
    with pytest.raises(FaceIndexError):
        FaceTracker(face_index=99).update(group, 0.0)


# ---------------------------------------------------------------------------------------------- videos
def test_invert_video_outputs(clip_mp4, tmp_path):
    pipe = StubPipeline()
    folder = invert_video(pipe, clip_mp4, tmp_path / "clip", VideoOptions(batch_size=4, side_by_side=True,
                                                                          view=(30, 5)))
    meta = json.loads((folder / "result.json").read_text())
    assert meta["files"] == {"reconstruction": "reconstruction.mp4", "view": "view_yaw+30_pitch+5.mp4",
                             "side_by_side": "side_by_side.mp4"}
    assert sorted(p.name for p in folder.iterdir()) == sorted([*meta["files"].values(), "result.json"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip"]          # no cache or temporary left
    assert meta["frame_count"] == N_FRAMES and meta["frames_with_face"] == N_FRAMES - 3
    assert meta["audio"] == "copied" and meta["fps"] == FPS and meta["smoothing"]["filter"] == "one-euro"
    per = meta["per_frame"]
    assert [r["status"] for r in per].count("no_face") == 3
    assert [r.get("held_frame") for r in per if r["status"] == "no_face"] == [4, 9, 9]
    ok = per[0]
    assert len(ok["camera"]) == 25 and len(ok["face_box"]) == 4 and "camera_yaw_deg" in ok
    assert pipe.inverted == N_FRAMES - 3 and max(pipe.calls) <= 4

    for name in meta["files"].values():
        s = _streams(folder / name)
        assert s["audio"] == ["aac"] and abs(s["audio_seconds"] - N_FRAMES / FPS) < 0.05, s
        assert s["video"][0][0] == "h264" and s["video"][0][3] == FPS
    recon, sbs = _decode(folder / "reconstruction.mp4"), _decode(folder / "side_by_side.mp4")
    assert recon.shape == (N_FRAMES, 512, 512, 3) and sbs.shape == (N_FRAMES, 512, 1536, 3)
    diff = lambda a, b: float(np.abs(a.astype(int) - b.astype(int)).mean())  # noqa: E731
    assert diff(recon[10], recon[9]) < 1 and diff(recon[11], recon[9]) < 1      # held
    assert diff(recon[9], recon[8]) > 1                                          # not held
    assert diff(sbs[3, :, :512], sbs[3, :, 512:1024]) < 3                        # stub: reconstruction = input
    assert diff(sbs[3, :, 1024:], sbs[3, :, 512:1024][:, ::-1]) < 3              # stub: view = mirror


@pytest.mark.slow   # four runs over the clip: ~15 s
def test_resume_after_a_kill(clip_mp4, tmp_path):
    """A run killed part-way keeps its inverted frames; the next run inverts only the rest and gives the
    same result as one uninterrupted run."""
    options = VideoOptions(batch_size=3)

    def kill_at(n):
        def progress(p):
            if p.done >= n:
                raise KeyboardInterrupt
        return progress

    first = StubPipeline()
    with pytest.raises(KeyboardInterrupt):
        invert_video(first, clip_mp4, tmp_path / "clip", options, progress=kill_at(7))
    cache = default_cache_dir(tmp_path / "clip")
    assert not (tmp_path / "clip").exists()
    cached = sorted(p.name for p in cache.glob("frame_*.npz"))
    assert len(cached) == first.inverted >= 6

    second = StubPipeline()
    seen = []
    folder = invert_video(second, clip_mp4, tmp_path / "clip", options, progress=seen.append)
    meta = json.loads((folder / "result.json").read_text())
    assert second.inverted == N_FRAMES - 3 - len(cached)
    assert meta["frames_from_cache"] == len(cached) and meta["frames_inverted_this_run"] == second.inverted
    assert seen[-1].done == N_FRAMES and seen[-1].cached == len(cached) and seen[-1].eta_s == 0
    assert not cache.exists()

    whole = invert_video(StubPipeline(), clip_mp4, tmp_path / "whole", options)
    other = json.loads((whole / "result.json").read_text())
    assert other["per_frame"] == meta["per_frame"]
    np.testing.assert_array_equal(_decode(whole / "view_orbit.mp4"), _decode(folder / "view_orbit.mp4"))

    # a cache made with other settings is not used
    with pytest.raises(KeyboardInterrupt):
        invert_video(StubPipeline(), clip_mp4, tmp_path / "again", options, progress=kill_at(4))
    warnings = []
    third = StubPipeline()
    invert_video(third, clip_mp4, tmp_path / "again", VideoOptions(batch_size=3, view=(10, 0)), warn=warnings.append)
    assert third.inverted == N_FRAMES - 3 and "other settings" in warnings[0]


@pytest.mark.parametrize("suffix, audio_codec, expected", [(".webm", None, "copied"),
                                                            (".mov", "pcm_s16le", "transcoded to aac")])
def test_containers_and_audio(source, tmp_path, suffix, audio_codec, expected):
    clip = _clip(source, n_frames=6, covered=(), out_of_frame=())
    path = write_clip(clip, tmp_path / f"clip{suffix}", audio_codec=audio_codec)
    assert probe(path).frames in (6, None) or abs(probe(path).frames - 6) <= 1
    folder = invert_video(StubPipeline(), path, tmp_path / "out", VideoOptions(max_frames=4))
    meta = json.loads((folder / "result.json").read_text())
    assert meta["audio"] == expected and meta["frame_count"] == 4
    s = _streams(folder / "reconstruction.mp4")
    # the audio ends with the video (+ up to two AAC frames of encoder delay and padding)
    assert s["audio"] and s["audio"][0] in ("opus", "aac") and s["audio_seconds"] <= 4 / FPS + 0.05, s
    quiet = invert_video(StubPipeline(), path, tmp_path / "quiet", VideoOptions(max_frames=2, audio=False))
    assert _streams(quiet / "reconstruction.mp4")["audio"] == []


def test_a_clip_without_faces(repo_examples, landmarker, tmp_path):
    from goae.align import NoFaceError, load_image

    coffee = np.asarray(load_image(repo_examples / "coffee.png").resize((256, 256)))
    clip = SimpleNamespace(frames=np.stack([coffee] * 3), fps=25.0)
    path = write_clip(clip, tmp_path / "coffee.mp4", audio_hz=None)
    with pytest.raises(NoFaceError, match="any of the 3 frames"):
        invert_video(StubPipeline(), path, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["coffee.mp4"]


def test_not_a_video(tmp_path):
    from goae.video import VideoError
    bad = tmp_path / "clip.mp4"
    bad.write_bytes(b"not a video at all" * 10)
    with pytest.raises(VideoError):
        invert_video(StubPipeline(), bad, tmp_path / "out")
    with pytest.raises(FileNotFoundError):
        invert_video(StubPipeline(), tmp_path / "missing.mp4", tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4"]


@pytest.mark.slow
def test_small_random_model_end_to_end(clip_mp4, tmp_path):
    from goae.pipeline import load_pipeline
    pipe = load_pipeline("random-small")
    folder = invert_video(pipe, clip_mp4, tmp_path / "clip", VideoOptions(batch_size=2, max_frames=3,
                                                                          side_by_side=True))
    meta = json.loads((folder / "result.json").read_text())
    assert meta["frame_count"] == 3 and meta["weights"] == "random-small (seed 0)" and meta["precision"] == "fp32"
    recon = _decode(folder / "reconstruction.mp4")
    assert recon.shape == (3, 512, 512, 3) and recon.std() > 1


# ------------------------------------------------------------------------- hostile and damaged clips (#29)
class GuardedStub(StubPipeline):
    """A StubPipeline that refuses to be asked for an orbit larger than the bound (a bomb would allocate it)."""
    def orbit_cameras(self, n_frames, **kwargs):
        from goae.video.invert import MAX_ORBIT_STEPS
        assert n_frames <= MAX_ORBIT_STEPS, n_frames
        return super().orbit_cameras(n_frames, **kwargs)


def _rate_bomb(path, rate: float, n: int = 4):
    """A tiny clip (n flat 64x64 frames, ~1.5 kB) whose declared frame rate and time base are `rate`."""
    import av
    from fractions import Fraction
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=Fraction(int(rate)))
        s.width = s.height = 64
        s.pix_fmt, s.options = "yuv420p", {"bf": "0"}
        for i in range(n):
            f = av.VideoFrame.from_ndarray(np.full((64, 64, 3), 40 * i, np.uint8), format="rgb24")
            f.pts = i
            c.mux(s.encode(f))
        c.mux(s.encode(None))
    return path


@pytest.mark.parametrize("rate", [4e8, 1e9, 5000])
def test_declared_frame_rate_is_bounded(tmp_path, rate):
    """#29.1: a 10 KB MP4 declaring 4e8 frames/s made the orbit allocate 12.8 GB before a frame was read."""
    from goae.video import VideoError
    bomb = _rate_bomb(tmp_path / "bomb.mp4", rate)
    with pytest.raises(VideoError, match="frame rate"):
        probe(bomb)
    with pytest.raises(VideoError, match="frame rate"):
        invert_video(GuardedStub(), bomb, tmp_path / "out", VideoOptions(max_frames=2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bomb.mp4"]


@pytest.mark.parametrize("header, error", [("W8000 H8000 F25:1", "too large"),       # 64 MP frames
                                           ("W64 H64 F400000000:1", "frame rate"),
                                           ("W64 H64 F1:1000", "frame rate")])        # one frame per 17 min
def test_declared_header_numbers_are_bounded(tmp_path, header, error):
    """A 50-byte YUV4MPEG file is all header: what it declares is checked before anything is decoded."""
    from goae.video import VideoError
    clip = tmp_path / "header.y4m"
    clip.write_bytes(f"YUV4MPEG2 {header} Ip A1:1 C420jpeg\nFRAME\n".encode())
    with pytest.raises(VideoError, match=error):
        probe(clip)
    with pytest.raises(VideoError, match=error):
        invert_video(GuardedStub(), clip, tmp_path / "out")


def test_orbit_and_times_are_bounded(tmp_path):
    """A legal but high rate (1000 frames/s, 1 h orbits) asks for at most MAX_ORBIT_STEPS cameras; frames whose
    time stamps collapse (a 1 ms clock holding 2.5 us steps) are placed 1/fps apart and counted."""
    from goae.video.invert import MAX_ORBIT_STEPS, VideoOptions as VO, _orbit_frames
    from goae.video.media import decode_frames
    assert _orbit_frames(VO(orbit_seconds=3600), 1000.0) == MAX_ORBIT_STEPS
    frames = list(decode_frames(_rate_bomb(tmp_path / "stamps.mkv", 4e5, n=5)))   # MKV keeps milliseconds
    assert [f.time for f in frames] == pytest.approx([0, 0.001, 0.002, 0.003, 0.004])
    assert [f.retimed for f in frames] == [False, True, True, True, True]


@pytest.mark.parametrize("suffix", [".mkv", ".webm"])
def test_truncated_clip_is_a_clear_error(source, tmp_path, suffix):
    """#29.9: a truncated MKV/WebM said "No face found in any of the 0 frames"."""
    from goae.video import VideoError
    clip = _clip(source, n_frames=4, covered=(), out_of_frame=())
    data = write_clip(clip, tmp_path / f"full{suffix}").read_bytes()
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(data[:len(data) // 20])
    with pytest.raises(VideoError, match="damaged or truncated"):
        invert_video(StubPipeline(), cut, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def _unblock(fifo):
    """Open the FIFO for writing and close it, so that a reader blocked on it (the bug) gets EOF and returns."""
    import os
    try:
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    except OSError:   # no reader waiting: nothing to unblock
        pass


def _returns_within(fn, seconds=60.0):
    """fn() in a thread: (finished, exception)."""
    import threading
    box = {}

    def run():
        try:
            fn()
        except BaseException as e:  # noqa: BLE001 (handed back to the test)
            box["e"] = e
    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    return not t.is_alive(), box.get("e")


def test_a_fifo_is_never_opened(tmp_path):
    """#29.2: a FIFO named x.mp4 blocked the video opener forever."""
    import os
    from goae.video import VideoError
    fifo = tmp_path / "x.mp4"
    os.mkfifo(fifo)
    try:
        for call in (lambda: probe(fifo), lambda: list(iter_frames(fifo)),
                     lambda: invert_video(StubPipeline(), fifo, tmp_path / "out")):
            done, e = _returns_within(call)
            assert done, "blocked on a FIFO"
            assert isinstance(e, VideoError) and "FIFO" in str(e), e
    finally:
        _unblock(fifo)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.mp4"]


def test_variable_frame_rate_keeps_the_source_timing(source, tmp_path):
    """#29.6: frames at 0, 0.1, 0.2, 2.0 and 4.0 s with 4.5 s of audio came out as a 0.5 s video with 0.5 s of
    audio. Every output keeps the frame times; the audio runs to the end of the last frame."""
    import av
    times = [0.0, 0.1, 0.2, 2.0, 4.0]
    clip = _clip(source, n_frames=5, covered=(), out_of_frame=())
    path = write_clip(clip, tmp_path / "vfr.mp4", times=times, audio_seconds=4.5)
    folder = invert_video(StubPipeline(), path, tmp_path / "out", VideoOptions(side_by_side=True))
    meta = json.loads((folder / "result.json").read_text())
    assert [r["time"] for r in meta["per_frame"]] == times and meta["frames_retimed"] == 0
    assert 4.0 < meta["duration_seconds"] <= 4.5
    for name in meta["files"].values():
        with av.open(str(folder / name)) as c:
            got = [round(float(f.time), 3) for f in c.decode(video=0)]
            duration = float(c.streams.video[0].duration * c.streams.video[0].time_base)
        assert got == times and abs(duration - meta["duration_seconds"]) < 0.01, (name, got, duration)
        s = _streams(folder / name)
        assert s["audio"] == ["aac"] and s["audio_seconds"] > 4.0, s


def test_a_damaged_cache_entry_is_inverted_again(clip_mp4, tmp_path):
    """#29.4: one damaged frame-cache file (BadZipFile; a cached frame of the wrong shape) failed the clip on
    every resume. Now each is inverted again, reported once, and counted."""
    options = VideoOptions(batch_size=3, max_frames=8)

    def stop_at(n):
        def progress(p):
            if p.done >= n:
                raise KeyboardInterrupt
        return progress

    with pytest.raises(KeyboardInterrupt):
        invert_video(StubPipeline(), clip_mp4, tmp_path / "clip", options, progress=stop_at(7))
    cache = default_cache_dir(tmp_path / "clip")
    entries = sorted(cache.glob("frame_*.npz"))
    assert len(entries) >= 4
    entries[0].write_bytes(entries[0].read_bytes()[:100])                     # cut short: BadZipFile
    with np.load(entries[1]) as z:                                             # frames of another size
        np.savez(entries[1], reconstruction=np.zeros((64, 64, 3), np.uint8), view=np.zeros((64, 64, 3), np.uint8),
                 camera=z["camera"], box=z["box"])
    np.savez(entries[2], reconstruction=np.zeros(3, object), view=np.zeros(3), camera=np.zeros(25), box=np.zeros(4))
    warnings, pipe = [], StubPipeline()
    folder = invert_video(pipe, clip_mp4, tmp_path / "clip", options, warn=warnings.append)
    meta = json.loads((folder / "result.json").read_text())
    assert meta["damaged_cache_entries_recomputed"] == 3 and meta["frames_from_cache"] == len(entries) - 3
    assert pipe.inverted == 7 - len(entries) + 3          # frames 0-7 less the covered frame 5
    damaged = [w for w in warnings if "damaged frame-cache" in w]
    assert len(damaged) == 1 and entries[0].name in damaged[0], warnings
    assert _decode(folder / "reconstruction.mp4").shape == (8, 512, 512, 3)
