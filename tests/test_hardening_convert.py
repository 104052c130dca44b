"""Issue #15, converter side: tiny files that describe huge things, and every other bad input, end in
one CheckpointError line before anything big is allocated or anything is written.

The bombs are built here from scratch (a network pickle is written with stand-ins for the official
`torch_utils.persistence` module, a torch.save zip by hand) at sizes that keep the tests fast; the
same builders at full size give the peak-memory numbers of the issue (see test_bombs_peak_memory).
"""

import collections
import io
import json
import os
import pickle
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from goae.weights import errors, guards
from goae.weights.checkpoints import load_official_generator, load_official_state_dict
from goae.weights.convert import convert_eg3d, main
from goae.weights.errors import (NonFiniteWeightsError, OversizedCheckpointError, UnsupportedArchitectureError,
                                 WrongCheckpointError)
from goae.weights.unpickle import read_official_generator
from goae.models.eg3d import FFHQ512_KWARGS, EG3DGenerator

from tiny import fake_persistence, module, network_pickle, official_pickle  # the official-format pickle builders

ROOT = Path(__file__).resolve().parents[1]

# A small EG3D (2X super-resolution, 16 channels): a real architecture, 2 MB as a network pickle.
SMALL_KWARGS = dict(
    FFHQ512_KWARGS, z_dim=16, w_dim=16, img_resolution=128, channel_base=1024, channel_max=16, sr_num_fp16_res=0,
    sr_kwargs=dict(channel_base=1024, channel_max=16, fused_modconv_default="inference_only"),
    rendering_kwargs=dict(FFHQ512_KWARGS["rendering_kwargs"], image_resolution=128, depth_resolution=4,
                          depth_resolution_importance=4,
                          superresolution_module="training.superresolution.SuperresolutionHybrid2X"))


# ----------------------------------------------------------------------------- builders


def small_generator(seed=0) -> EG3DGenerator:
    torch.manual_seed(seed)
    return EG3DGenerator.from_official_kwargs(SMALL_KWARGS, neural_rendering_resolution=32)


def shared_lists_pickle(depth: int) -> bytes:
    """Constructor kwargs holding [x, x] nested `depth` times: a few hundred bytes, 2**depth nodes."""
    x = 0
    for _ in range(depth):
        x = [x, x]
    return network_pickle(module(_init_kwargs={"z_dim": 1, "evil": x}))


def shared_modules_pickle(depth: int) -> bytes:
    """Sub-modules {'a': m, 'b': m} nested `depth` times: 2**depth paths to one parameter."""
    m = module({"w": torch.nn.Parameter(torch.zeros(1))}, class_name="Leaf")
    for _ in range(depth):
        m = module(modules={"a": m, "b": m}, class_name="Fork")
    return network_pickle(module(modules={"x": m}, _init_kwargs={"z_dim": 1}))


def kwargs_pickle(class_name="TriPlaneGenerator", nrr=128, params=None, **changes) -> bytes:
    """G_ema with no weights and FFHQ-512 kwargs changed by `changes` (1 KB)."""
    kw = dict(FFHQ512_KWARGS, **changes)
    return network_pickle(module(params, class_name=class_name, _init_kwargs=kw,
                                 rendering_kwargs=kw.get("rendering_kwargs"), neural_rendering_resolution=nrr))


def memo_bomb(index: int) -> bytes:
    """PROTO 2, NONE, LONG_BINPUT index, STOP: CPython's unpickler grows its memo table to 2*index."""
    return b"\x80\x02N" + b"r" + struct.pack("<I", index) + b"."


class _Storage:
    def __init__(self, numel):
        self.numel = numel


class _Tensor:
    """Pickles as torch's own tensor rebuild over a persistent storage id of `numel` floats."""

    def __init__(self, numel, size, stride):
        self.storage, self.size, self.stride = _Storage(numel), size, stride

    def __reduce__(self):
        return (torch._utils._rebuild_tensor_v2,
                (self.storage, 0, self.size, self.stride, False, collections.OrderedDict()))


class _TorchPickler(pickle.Pickler):
    def persistent_id(self, obj):
        return ("storage", torch.FloatStorage, "0", "cpu", obj.numel) if isinstance(obj, _Storage) else None


def torch_zip(numel: int, record: bytes | int, deflate: bool = False, size=None, stride=None) -> bytes:
    """A torch.save zip of {'w': float tensor}: storage `numel` floats, record = bytes or a count of
    zero bytes (streamed, deflated if `deflate`: a zip bomb), tensor view `size`/`stride`."""
    buf = io.BytesIO()
    _TorchPickler(buf, protocol=2).dump({"w": _Tensor(numel, size or (numel,), stride or (1,))})
    out = io.BytesIO()
    # Level 1: 1 GB of zeros deflates in about a second, to 4.6 MB.
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED, compresslevel=1) as z:
        z.writestr("archive/data.pkl", buf.getvalue(), compress_type=zipfile.ZIP_STORED)
        z.writestr("archive/byteorder", "little", compress_type=zipfile.ZIP_STORED)
        with z.open("archive/data/0", "w", force_zip64=not isinstance(record, bytes)) as f:
            if isinstance(record, bytes):
                f.write(record)
            else:
                chunk = bytes(1 << 24)
                for start in range(0, record, len(chunk)):
                    f.write(chunk[:min(len(chunk), record - start)])
        z.writestr("archive/version", "3\n", compress_type=zipfile.ZIP_STORED)
    return out.getvalue()


def storage_pickle(data: bytes) -> bytes:
    """A network pickle whose parameter is torch.storage._load_from_bytes(data)."""
    class Storage:
        def __reduce__(self):
            return (torch.storage._load_from_bytes, (data,))

    return network_pickle(module({"w": Storage()}, _init_kwargs={"z_dim": 1}))


def _write(tmp_path: Path, name: str, data: bytes) -> Path:
    (tmp_path / name).write_bytes(data)
    return tmp_path / name


# ----------------------------------------------------------------------------- the builders are real


def test_official_pickle_of_a_goae_generator_converts(tmp_path):
    # The control for everything below: a well-formed pickle from these builders converts exactly.
    G = small_generator()
    path = _write(tmp_path, "g.pkl", official_pickle(G, SMALL_KWARGS))
    out = convert_eg3d(path, tmp_path / "out")
    G2 = EG3DGenerator.from_pretrained(out)
    assert all(torch.equal(v, G2.state_dict()[k]) for k, v in G.state_dict().items())


def test_torch_zip_builder_loads_when_sane(tmp_path):
    path = _write(tmp_path, "ok.pt", torch_zip(4, struct.pack("<4f", 1, 2, 3, 4)))
    assert torch.equal(load_official_state_dict(path)["w"], torch.tensor([1.0, 2, 3, 4]))


# ----------------------------------------------------------------------------- record-tree bombs


@pytest.mark.parametrize("make,match", [
    (lambda: shared_lists_pickle(16), "constructor kwargs has more than 10,000 entries"),  # 65k nodes in 400 bytes
    (lambda: shared_modules_pickle(16), "module tree has more than 20,000 entries"),  # 65k module visits in 1.8 KB
])
def test_shared_subobjects_are_bounded(tmp_path, make, match):
    with pytest.raises(OversizedCheckpointError, match=match):
        read_official_generator(_write(tmp_path, "bomb.pkl", make()))


def test_cycles_and_deep_nesting(tmp_path):
    loop: list = []
    loop.append(loop)
    deep: list = []
    for _ in range(40):
        deep = [deep]
    cyclic = torch.nn.Sequential()  # pickled with BUILD, so it can really contain itself
    cyclic._modules["self"] = cyclic
    cases = [module(_init_kwargs={"z_dim": 1, "x": loop}), module(_init_kwargs={"z_dim": 1, "x": deep}),
             module(modules={"c": cyclic}, _init_kwargs={"z_dim": 1})]
    for i, g in enumerate(cases):
        with pytest.raises(OversizedCheckpointError, match="nested more than 32 levels deep"):
            read_official_generator(_write(tmp_path, f"{i}.pkl", network_pickle(g)))


@pytest.mark.parametrize("value,match", [
    ({1: 2}, "non-string keys"),
    (torch.ones(2), "hold a Tensor"),
    ({"s": {1, 2}}, "hold a set"),
])
def test_kwargs_must_be_plain_values(tmp_path, value, match):
    with pytest.raises(WrongCheckpointError, match=match):
        read_official_generator(_write(tmp_path, "k.pkl", network_pickle(module(_init_kwargs={"z_dim": 1, "x": value}))))


def _shared(depth: int, kind=list):
    x = 0
    for _ in range(depth):
        x = kind([x, x])
    return x


class _Reduce:
    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return (self.fn, self.args)


def test_error_messages_stay_short(tmp_path):
    # Messages quote what they refuse; a quoted shared structure must not be expanded (2**20 nodes here).
    x, t = _shared(20), _shared(20, tuple)
    cases = [
        ({"G_ema": x}, WrongCheckpointError, "not a persistent EG3D module"),
        ({t: 1}, WrongCheckpointError, "has no 'G_ema'"),
        ({"G_ema": 1, "x": _Reduce(np.float32(1).__reduce__()[0], x, b"")}, errors.UnsafePickleError, "numpy scalar"),
    ]
    for i, (obj, error, match) in enumerate(cases):
        with pytest.raises(error, match=match) as e:
            read_official_generator(_write(tmp_path, f"{i}.pkl", pickle.dumps(obj, protocol=4)))
        assert len(str(e.value)) < 500
    g = module(_init_kwargs={"z_dim": 1}, _init_args=x)
    with pytest.raises(WrongCheckpointError, match="positional args") as e:
        read_official_generator(_write(tmp_path, "args.pkl", network_pickle(g)))
    assert len(str(e.value)) < 500


@pytest.mark.parametrize("spec", [[("a", "f4"), ("b", "O")], "O", "U100000000000", _shared(12)])
def test_numpy_dtypes_are_plain(tmp_path, spec):
    data = pickle.dumps({"G_ema": _Reduce(np.dtype, spec)}, protocol=4)
    with pytest.raises(errors.UnsafePickleError, match="refusing numpy dtype"):
        read_official_generator(_write(tmp_path, "dtype.pkl", data))


def test_persistent_class_name_must_be_a_string(tmp_path):
    with fake_persistence() as rebuild:
        data = pickle.dumps({"G_ema": _Reduce(rebuild, dict(type="class", class_name=_shared(20), state={}))}, protocol=4)
    with pytest.raises(WrongCheckpointError, match="malformed persistent object") as e:
        read_official_generator(_write(tmp_path, "cls.pkl", data))
    assert len(str(e.value)) < 500


def test_memo_index_bomb(tmp_path):
    # 9 bytes: CPython's unpickler fills a memo table of 2 * index entries (8 bytes each).
    for index in (1 << 20, 1 << 22):  # 2**29 (8.4 GB before the fix) is in test_bombs_peak_memory
        with pytest.raises(OversizedCheckpointError, match=f"memo index {index}"):
            read_official_generator(_write(tmp_path, "memo.pkl", memo_bomb(index)))
    ok = pickle.dumps({"G_ema": 3}, protocol=2)  # protocol 2 uses BINPUT: small indices are fine
    with pytest.raises(WrongCheckpointError, match="not a persistent EG3D module"):
        read_official_generator(_write(tmp_path, "ok.pkl", ok))


def test_opcode_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(guards, "MAX_PICKLE_OPS", 1000)
    data = b"\x80\x04" + b")0" * 1000 + b"N."  # EMPTY_TUPLE, POP ... : 2000 opcodes
    with pytest.raises(OversizedCheckpointError, match="more than 1,000 pickle opcodes"):
        read_official_generator(_write(tmp_path, "ops.pkl", data))


def test_huge_declared_lengths_are_truncation(tmp_path):
    # BINBYTES8 / FRAME declaring 2**60 bytes in a 20-byte file: found by the opcode scan, nothing read.
    for data in (b"\x80\x04\x8e" + struct.pack("<Q", 1 << 60) + b"abc.", b"\x80\x04\x95" + struct.pack("<Q", 1 << 60) + b"N."):
        with pytest.raises(errors.TruncatedCheckpointError):
            read_official_generator(_write(tmp_path, "len.pkl", data))
    with pytest.raises(WrongCheckpointError, match="unknown"):
        read_official_generator(_write(tmp_path, "op.pkl", b"\x80\x04\xff."))


# ----------------------------------------------------------------------------- declared sizes


def test_zip_bomb_pt(tmp_path):
    data = torch_zip(16 << 20, 64 << 20, deflate=True)  # 64 MB of storage in a 0.3 MB file
    assert len(data) < 400_000
    with pytest.raises(OversizedCheckpointError, match="compressed entries"):
        load_official_state_dict(_write(tmp_path, "bomb.pt", data))


def test_zip_bomb_inside_network_pickle(tmp_path):
    data = storage_pickle(torch_zip(16 << 20, 64 << 20, deflate=True))
    with pytest.raises(OversizedCheckpointError, match="embedded tensor storage has compressed entries"):
        read_official_generator(_write(tmp_path, "bomb.pkl", data))


def test_zip_entries_larger_than_file(tmp_path):
    data = bytearray(torch_zip(4, bytes(16)))
    # The storage record's central-directory entry declares 1 GB uncompressed (offset 24 of the entry).
    entry = data.index(b"PK\x01\x02\x14")  # central directory entries, in order: data.pkl, byteorder, data/0
    for _ in range(2):
        entry = data.index(b"PK\x01\x02", entry + 4)
    assert data[entry + 46:entry + 60] == b"archive/data/0"
    struct.pack_into("<I", data, entry + 24, 1 << 30)
    with pytest.raises(OversizedCheckpointError, match="more than the .*-byte file holds"):
        load_official_state_dict(_write(tmp_path, "big.pt", bytes(data)))


def test_views_declaring_more_than_the_file(tmp_path):
    # One stored float viewed as 2**28 of them (stride 0): anything that copies it allocates 1 GB.
    pt = torch_zip(1, bytes(4), size=(1 << 28,), stride=(0,))
    with pytest.raises(OversizedCheckpointError, match="tensors declare 1,073,741,824 bytes"):
        load_official_state_dict(_write(tmp_path, "view.pt", pt))
    view = torch.zeros(1).expand(1 << 28)
    pkl = network_pickle(module({"w": torch.nn.Parameter(view, requires_grad=False)}, _init_kwargs={"z_dim": 1}))
    with pytest.raises(OversizedCheckpointError, match="tensors declare"):
        read_official_generator(_write(tmp_path, "view.pkl", pkl))


# ----------------------------------------------------------------------------- architectures


# Just outside the bounds, so that the unfixed converter (which built whatever the kwargs said) fails
# these tests cheaply; the full-size bombs run in a memory-limited process in test_bombs_peak_memory.
@pytest.mark.parametrize("changes,match", [
    (dict(z_dim=1025, w_dim=1025), "'z_dim' must be an integer in \\[1, 1024\\]; got 1025"),
    (dict(img_resolution=100000), "'img_resolution' must be an integer in \\[128, 512\\]"),
    (dict(channel_max=1025), "'synthesis_kwargs.channel_max' must be an integer"),
    (dict(mapping_kwargs={"num_layers": 17}), "'mapping_kwargs.num_layers'"),
    (dict(rendering_kwargs=dict(FFHQ512_KWARGS["rendering_kwargs"], depth_resolution=10 ** 6)), "depth_resolution"),
    (dict(w_dim=512.0), "'w_dim' must be an integer"),
    (dict(w_dim=True), "'w_dim' must be an integer"),
])
def test_kwargs_out_of_range(tmp_path, changes, match):
    with pytest.raises(UnsupportedArchitectureError, match=match):
        load_official_generator(_write(tmp_path, "k.pkl", kwargs_pickle(**changes)))


def test_neural_rendering_resolution_out_of_range(tmp_path):
    with pytest.raises(UnsupportedArchitectureError, match="'neural_rendering_resolution' must be an integer in \\[8, 512\\]"):
        load_official_generator(_write(tmp_path, "k.pkl", kwargs_pickle(nrr=100000)))


@pytest.mark.parametrize("changes,match", [
    (dict(unknown_kwarg=1), "cannot build the model from it \\(TypeError"),
    (dict(rendering_kwargs=dict(FFHQ512_KWARGS["rendering_kwargs"], superresolution_module="x.SR16X")), "unsupported superresolution_module"),
])
def test_kwargs_goae_cannot_build(tmp_path, changes, match):
    with pytest.raises(UnsupportedArchitectureError, match=match):
        load_official_generator(_write(tmp_path, "k.pkl", kwargs_pickle(**changes)))


def test_valid_kwargs_without_weights(tmp_path):
    # In range but no weights: refused by comparing with the model built on the meta device, before a
    # real one exists (test_bombs_peak_memory: the same at the largest allowed sizes stays small).
    with pytest.raises(errors.StateDictMismatchError, match="176 missing keys"):
        load_official_generator(_write(tmp_path, "k.pkl", kwargs_pickle()))


def test_stylegan2_pickle(tmp_path):
    # A StyleGAN2-ADA network pickle: G_ema is a 'Generator' without rendering_kwargs.
    kw = dict(z_dim=512, c_dim=0, w_dim=512, img_resolution=1024, img_channels=3, mapping_kwargs={"num_layers": 8})
    data = network_pickle(module(class_name="Generator", _init_kwargs=kw, z_dim=512))
    with pytest.raises(UnsupportedArchitectureError, match="'Generator', not EG3D's TriPlaneGenerator"):
        load_official_generator(_write(tmp_path, "sg2.pkl", data))
    # An EG3D class name but no rendering_kwargs.
    data = network_pickle(module(_init_kwargs=kw))
    with pytest.raises(UnsupportedArchitectureError, match="lacks the EG3D constructor kwargs \\['rendering_kwargs'\\]"):
        load_official_generator(_write(tmp_path, "nork.pkl", data))


# ----------------------------------------------------------------------------- NaN / Inf


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_pkl(tmp_path, bad):
    G = small_generator()
    with torch.no_grad():
        G.backbone.mapping.fc0.weight[0, 0] = bad
    with pytest.raises(NonFiniteWeightsError, match="NaN or Inf values in 1 weight tensor\\(s\\): backbone.mapping.fc0.weight;"):
        convert_eg3d(_write(tmp_path, "nan.pkl", official_pickle(G, SMALL_KWARGS)), tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nan.pkl"]


def test_non_finite_weights_pt(tmp_path):
    torch.save({"a": torch.ones(3), "b": torch.tensor([1.0, float("-inf")]), "n": torch.tensor([0, 1])}, tmp_path / "x.pt")
    with pytest.raises(NonFiniteWeightsError, match="in 1 weight tensor\\(s\\): b;"):
        load_official_state_dict(tmp_path / "x.pt")


# ----------------------------------------------------------------------------- the command line


def _one_line(capsys, argv, code: int = 2) -> str:
    assert main([str(a) for a in argv]) == code
    err = capsys.readouterr().err
    assert err.startswith("python -m goae.convert: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_cli_fifo(tmp_path):
    # A FIFO used to block the converter forever (nothing ever writes to it): refused before opening.
    # A fresh `python -m goae.convert`, so that a hang is a timeout and not a stuck test run.
    fifo = tmp_path / "fifo.pkl"
    os.mkfifo(fifo)
    r = subprocess.run([sys.executable, "-m", "goae.convert", "goae", "--eg3d", str(fifo), "--encoder", str(fifo),
                        "--afa", str(fifo), str(tmp_path / "out")], cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "not a regular file" in r.stderr, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fifo.pkl"]


def test_cli_every_failure_is_one_line(tmp_path, capsys):
    nan = small_generator()
    with torch.no_grad():
        nan.decoder.net[0].bias.fill_(float("nan"))
    os.symlink("/dev/zero", tmp_path / "zero.pkl")
    files = {
        "stylegan2.pkl": network_pickle(module(class_name="Generator", _init_kwargs={"z_dim": 512, "w_dim": 512})),
        "kwargs.pkl": kwargs_pickle(w_dim=1025),
        "unknown_kwarg.pkl": kwargs_pickle(foo=1),
        "nan.pkl": official_pickle(nan, SMALL_KWARGS),
        "lists.pkl": shared_lists_pickle(16),
        "memo.pkl": memo_bomb(1 << 24),
        "zipbomb.pkl": storage_pickle(torch_zip(1 << 20, 4 << 20, deflate=True)),
        "garbage.pkl": b"\x80\x04\xff\xfe",
    }
    for name, data in files.items():
        assert name in _one_line(capsys, ["eg3d", _write(tmp_path, name, data), tmp_path / "out"])
    assert "not a regular file" in _one_line(capsys, ["eg3d", tmp_path / "zero.pkl", tmp_path / "out"])
    good = _write(tmp_path, "good.pkl", official_pickle(small_generator(), SMALL_KWARGS))
    # The output path is a symlink (dangling, or to a folder) or lies under a file.
    os.symlink(tmp_path / "elsewhere", tmp_path / "link")
    assert "symbolic link" in _one_line(capsys, ["eg3d", good, tmp_path / "link", "--overwrite"])
    (tmp_path / "elsewhere").mkdir()
    assert "symbolic link" in _one_line(capsys, ["eg3d", good, tmp_path / "link", "--overwrite"])
    _one_line(capsys, ["eg3d", good, tmp_path / "good.pkl" / "out"])
    assert main(["eg3d", str(good), str(tmp_path / "out")]) == 0
    assert list((tmp_path / "elsewhere").iterdir()) == [] and (tmp_path / "link").is_symlink()
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name or ".old-" in p.name]


def test_main_unexpected_errors_are_one_line(tmp_path, capsys, monkeypatch):
    # A full disk while writing (the writer raises ENOSPC): one line, exit 1, nothing left behind.
    def full_disk(*a, **k):
        raise OSError(28, "No space left on device")

    good = _write(tmp_path, "good.pkl", official_pickle(small_generator(), SMALL_KWARGS))
    monkeypatch.setattr(EG3DGenerator, "save_pretrained", full_disk)
    assert _one_line(capsys, ["eg3d", good, tmp_path / "out"], code=1) == "python -m goae.convert: error: No space left on device\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.pkl"]


# ----------------------------------------------------------------------------- peak memory


_PEAK = """
import json, resource, sys
resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))  # if a bomb goes off, fail instead of swapping
from goae.weights.checkpoints import load_official_state_dict
from goae.weights.convert import main
from goae.weights.errors import CheckpointError
results = {}
for path in sys.argv[1:]:
    if path.endswith(".pt"):
        try:
            load_official_state_dict(path)
            results[path] = "loaded"
        except CheckpointError as e:
            results[path] = str(e)
    else:
        results[path] = main(["eg3d", path, path + ".out"])
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across fork+exec (pytest's own size)
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(json.dumps({"results": results, "peak_mb": hwm / 1024}))
"""


def test_bombs_peak_memory(tmp_path):
    """The bombs of the issue at their full size, in one fresh interpreter: each is refused and the
    process never grows past what importing torch and goae costs. Before the fix (measured):
    shared lists 7.5 GB (depth 25), shared modules 2.1 GB and 25 s (depth 22), z_dim/w_dim 16384
    5.1 GB, deflated storage 2.5 GB, memo index 8.4 GB."""
    zip_bomb = torch_zip(1 << 28, 1 << 30, deflate=True)  # 1 GB of storage in a 4.6 MB file
    bombs = {
        "lists.pkl": shared_lists_pickle(30),
        "modules.pkl": shared_modules_pickle(30),
        "dims.pkl": kwargs_pickle(z_dim=16384, w_dim=16384),
        "max_dims.pkl": kwargs_pickle(z_dim=1024, w_dim=1024, channel_base=131072, channel_max=1024),
        "memo.pkl": memo_bomb(0x1FFFFFFF),
        "zip.pkl": storage_pickle(zip_bomb),
        "zip.pt": zip_bomb,
        "view.pt": torch_zip(1, bytes(4), size=(1 << 30,), stride=(0,)),
    }
    paths = [str(_write(tmp_path, name, data)) for name, data in bombs.items()]
    assert max(len(d) for d in bombs.values()) < 5_000_000
    r = subprocess.run([sys.executable, "-c", _PEAK, *paths], cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    for path, result in out["results"].items():
        if path.endswith(".pt"):
            assert "compressed entries" in result or "tensors declare" in result, (path, result)
        else:
            assert result == 2, path
    errors = r.stderr.strip().splitlines()
    assert len(errors) == 6 and all(e.startswith("python -m goae.convert: error: ") for e in errors), r.stderr
    assert out["peak_mb"] < 1000, out  # torch + goae imports ~350 MB; each bomb was GBs
