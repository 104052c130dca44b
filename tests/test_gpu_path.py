"""The GPU path without a GPU (issue #28): layout, batching, compilation and host syncs, checked on CPU
and meta tensors with the CUDA queries faked only where a device property is asked for."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from goae import export, fast
from goae.camera import camera_label
from goae.export.video import write_turntable
from goae.export.views import view_batch_size
from goae.models.goae import GOAE
from goae.models.stylegan2 import SynthesisBlock
from goae.pipeline import GOAEPipeline


@pytest.fixture(scope="module")
def pipe():
    return GOAEPipeline.from_preset("small", 0)


# ---------------------------------------------------------------------------------------- memory format
def test_memory_format_follows_the_device_type():
    """NHWC only on a CPU, where it was measured faster; a GPU keeps NCHW even when asked for it."""
    assert fast.memory_format_for(True, "cpu") == torch.channels_last
    assert fast.memory_format_for(True, "cuda") == torch.contiguous_format
    assert fast.memory_format_for(False, "cpu") == torch.contiguous_format
    assert fast.memory_format_for(False, "cuda") == torch.contiguous_format
    x = torch.empty(2, 8, 16, 16, device="meta")
    assert x.contiguous(memory_format=fast.memory_format_for(True, "cuda")).is_contiguous()
    assert not x.contiguous(memory_format=fast.memory_format_for(True, "cuda")).is_contiguous(
        memory_format=torch.channels_last)


class _Seen(Exception):
    pass


def _first_conv_layout(channels_last: bool | None, device: str) -> bool:
    """True when a const (b4-like) block's first convolution gets NHWC activations on `device` (stopped
    there: the layers themselves need a real device)."""
    block = SynthesisBlock(0, 16, w_dim=32, resolution=8, img_channels=3, is_last=False)
    block.channels_last = channels_last

    def stop(module, args):
        raise _Seen(args[0].is_contiguous(memory_format=torch.channels_last) and not args[0].is_contiguous())
    hook = block.conv1.register_forward_pre_hook(stop)
    block = block.to_empty(device=device) if device == "meta" else block.to(device)
    try:
        with torch.no_grad(), pytest.raises(_Seen) as seen:
            block(None, None, torch.randn(2, block.num_conv + block.num_torgb, 32, device=device), noise_mode="const")
    finally:
        hook.remove()
    return seen.value.args[0]


def test_fast_path_layout_follows_the_device(pipe):
    """enable_fast_path(channels_last=True) leaves the layout to the device (NHWC on a CPU, NCHW
    elsewhere: a meta tensor stands in for the GPU); channels_last=False forces NCHW."""
    blocks = [m for n, m in fast.compiled_modules(pipe).items() if n.startswith("synthesis.")]
    pipe.enable_fast_path("fp32", channels_last=True)
    try:
        assert all(b.channels_last is None for b in blocks) and pipe.afa.channels_last is None
        layout = blocks[0].channels_last
        assert _first_conv_layout(layout, "cpu") is fast.channels_last_for(True, "cpu") is True
        assert _first_conv_layout(layout, "meta") is fast.channels_last_for(True, "cuda") is False
        pipe.enable_fast_path("fp32", channels_last=False)
        assert all(b.channels_last is False for b in blocks) and pipe.afa.channels_last is False
        assert _first_conv_layout(blocks[0].channels_last, "cpu") is False
    finally:
        pipe.disable_fast_path()


# ---------------------------------------------------------------------------------------- batched views
@pytest.fixture(scope="module")
def result(pipe):
    g = torch.Generator().manual_seed(3)
    return pipe(torch.rand(1, 3, 512, 512, generator=g) * 2 - 1, camera_label(0.1, -0.05), output_type=None)


def test_view_batches_by_device():
    assert view_batch_size("cpu") == 4
    assert view_batch_size("cuda") == view_batch_size(torch.device("cuda", 1)) == GOAE.GPU_RENDER_BATCH == 8


def test_batched_turntable_frames_equal_one_at_a_time(pipe, result, tmp_path):
    """Turntable frames come in batches (one render call and one host copy each), bit-identical on a CPU
    to rendering each frame alone; write_turntable encodes exactly those frames."""
    import av

    cams = pipe.orbit_cameras(5)
    done = []
    batches = list(export.iter_views(pipe, result, cams, progress=lambda i, n: done.append((i, n))))
    assert [b.shape[0] for b in batches] == [4, 1] and done == [(4, 5), (5, 5)]
    alone = [export.iter_views(pipe, result, cams[i:i + 1], batch_size=1) for i in range(5)]
    np.testing.assert_array_equal(np.concatenate(batches), np.concatenate([next(a) for a in alone]))
    preview = np.concatenate(list(export.iter_views(pipe, result, cams, neural_rendering_resolution=32)))
    assert preview.shape == (5, 512, 512, 3) and not np.array_equal(preview, np.concatenate(batches))

    path = write_turntable(pipe, result, tmp_path / "turntable.mp4", frames=5, fps=10, neural_rendering_resolution=32)
    with av.open(str(path)) as f:
        decoded = [fr.to_ndarray(format="rgb24") for fr in f.decode(video=0)]
    assert len(decoded) == 5 and decoded[0].shape == (512, 512, 3)
    assert np.abs(decoded[0].astype(int) - preview[0]).mean() < 8  # H.264 at crf 18 of the same frames
    with pytest.raises(export.ExportError, match="frames"):
        write_turntable(pipe, result, tmp_path / "none.mp4", frames=0)
    assert not (tmp_path / "none.mp4").exists()
