"""Converter, atomic IO and Hub resolution: safety, error reporting, bitwise weight parity."""

import io
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import tolerances as T
import torch
from safetensors.torch import load_file, save_file

from goae.weights import checkpoints, convert, unpickle
from goae.weights.checkpoints import load_goae_checkpoints, load_official_state_dict
from goae.weights.checks import check_state_dict, shape_map
from goae.weights.convert import convert_eg3d, main
from goae.weights.errors import (CheckpointError, CheckpointNotFoundError, StateDictMismatchError, TruncatedCheckpointError,
                                 UnsafePickleError, WeightsNotFoundError, WrongCheckpointError)
from goae.weights.unpickle import read_network_pickle, read_official_generator
from goae.weights.resolve import resolve_pretrained
from goae.io import atomic_dir, atomic_path, atomic_write_bytes

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def pkl(parity_dir) -> Path:
    return parity_dir / "eg3d" / "g_tiny_official_format.pkl"


@pytest.fixture(scope="module")
def official(pkl):
    return read_official_generator(pkl)


# ----------------------------------------------------------------------------- the real pickle


def test_state_dict_bitwise_equal_to_safetensors(official, parity_dir):
    ref = load_file(parity_dir / "eg3d" / "g_tiny.safetensors")
    sd = official.state_dict
    assert sorted(sd) == sorted(ref) and len(sd) == len(ref) == 177
    for k in ref:
        assert sd[k].dtype == ref[k].dtype and sd[k].shape == ref[k].shape, k
        assert torch.equal(sd[k], ref[k]), k
        assert not isinstance(sd[k], torch.nn.Parameter)


def test_kwargs_and_attributes(official, parity_dir):
    cfg = json.loads((parity_dir / "eg3d" / "g_tiny_config.json").read_text())
    assert official.class_name == "TriPlaneGenerator"
    assert official.init_kwargs == cfg["constructor_kwargs"]
    assert type(official.init_kwargs["rendering_kwargs"]) is dict  # EasyDict -> plain dict
    assert official.rendering_kwargs == cfg["constructor_kwargs"]["rendering_kwargs"]
    # The pickled attribute, not the config: official synthesis() overwrites it on every call with
    # an explicit resolution, and the goldens' last call before pickling used 64.
    assert official.neural_rendering_resolution in (32, 64)
    json.dumps(official.init_kwargs)  # plain, serialisable data


def test_whole_pickle_structure(pkl):
    data = read_network_pickle(pkl)
    assert set(data) == {"training_set_kwargs", "G", "D", "G_ema", "augment_pipe"}
    assert data["G"] is data["G_ema"] and data["augment_pipe"] is None
    assert isinstance(data["D"], unpickle.PickledObject)
    decoder = data["G_ema"].state["_modules"]["decoder"]
    assert decoder.class_name == "training.triplane.OSGDecoder"  # inert stand-in, state recorded
    assert "net" in decoder.state["_modules"]


def test_non_persistent_buffers_are_skipped():
    child = unpickle.PickledObject()
    child.state = {"_parameters": {"w": torch.nn.Parameter(torch.ones(2))}, "_buffers": {"a": torch.zeros(1), "tmp": torch.zeros(3), "none": None},
                   "_non_persistent_buffers_set": {"tmp"}, "_modules": {}}
    root = unpickle.PickledObject()
    root.state = {"_parameters": {"p": None}, "_buffers": {}, "_modules": {"child": child, "gone": None}}
    assert list(unpickle.module_state_dict(root)) == ["child.w", "child.a"]


# ----------------------------------------------------------------------------- malicious pickles


def _evil(fn, *args):
    class Evil:
        def __reduce__(self):
            return (fn, args)

    return Evil()


def _touch_cmd(marker: Path) -> str:
    return f"touch {marker}"


def _assert_really_malicious(data: bytes, marker: Path):
    # Control: plain pickle.loads does run the payload, so the test below can fail.
    pickle.loads(data)
    assert marker.exists()
    marker.unlink()


def _official_like(monkeypatch, payload, where: str) -> bytes:
    """An official-looking network pickle ({'G_ema': persistent obj}) with `payload` nested inside."""
    from tiny import persistence_modules

    modules = persistence_modules()  # installed for the whole test: the control unpickles the payload
    for name, mod in modules.items():
        monkeypatch.setitem(sys.modules, name, mod)
    _reconstruct_persistent_obj = modules["torch_utils.persistence"]._reconstruct_persistent_obj

    class Persistent:
        def __init__(self, state):
            self.state = state

        def __reduce__(self):
            return (_reconstruct_persistent_obj, (dict(type="class", version=6, module_src="# src", class_name="TriPlaneGenerator", state=self.state),))

    mapping = Persistent({"_parameters": {}, "_buffers": {}, "_modules": {}, "z_dim": 1, "_init_kwargs": {}})
    state = {"_parameters": {}, "_buffers": {}, "_modules": {"mapping": mapping}, "_init_kwargs": {"z_dim": 1}}
    if where == "init_kwargs":
        state["_init_kwargs"]["evil"] = payload
    elif where == "submodule_state":
        mapping.state["weight_gain"] = payload
    else:
        state["_parameters"]["w"] = payload
    return pickle.dumps({"G_ema": Persistent(state), "G": None, "D": None}, protocol=4)


@pytest.mark.parametrize("protocol", [2, 4, 5])
@pytest.mark.parametrize("kind", ["os.system", "builtins.exec", "subprocess.Popen"])
def test_top_level_malicious_pickle(tmp_path, kind, protocol):
    marker = tmp_path / "pwned"
    if kind == "os.system":
        payload, name = _evil(os.system, _touch_cmd(marker)), "system"
    elif kind == "builtins.exec":
        payload, name = _evil(exec, f"open({str(marker)!r}, 'w').close()"), "builtins.exec"
    else:
        payload, name = _evil(subprocess.Popen, ["touch", str(marker)]), "subprocess.Popen"
    data = pickle.dumps({"G_ema": payload}, protocol=protocol)
    if kind != "subprocess.Popen":  # Popen returns before `touch` finishes; skip the timing-prone control
        _assert_really_malicious(data, marker)
    f = tmp_path / "evil.pkl"
    f.write_bytes(data)
    with pytest.raises(UnsafePickleError, match=name):
        read_network_pickle(f)
    assert not marker.exists()


@pytest.mark.parametrize("where", ["init_kwargs", "submodule_state", "parameters"])
def test_nested_malicious_global(tmp_path, monkeypatch, where):
    marker = tmp_path / "pwned"
    data = _official_like(monkeypatch, _evil(os.system, _touch_cmd(marker)), where)
    _assert_really_malicious(data, marker)
    f = tmp_path / "evil.pkl"
    f.write_bytes(data)
    with pytest.raises(UnsafePickleError, match=r"posix\.system"):
        read_official_generator(f)
    assert not marker.exists()


def test_malicious_embedded_storage_bytes(tmp_path, monkeypatch):
    # The payload hides inside the bytes given to torch.storage._load_from_bytes (a torch.save zip).
    marker = tmp_path / "pwned"
    buf = io.BytesIO()
    torch.save(_evil(os.system, _touch_cmd(marker)), buf)
    storage = _evil(torch.storage._load_from_bytes, buf.getvalue())
    data = _official_like(monkeypatch, storage, "parameters")
    _assert_really_malicious(data, marker)
    f = tmp_path / "evil.pkl"
    f.write_bytes(data)
    with pytest.raises(UnsafePickleError, match=r"weights_only.*posix\.system"):
        read_official_generator(f)
    assert not marker.exists()


def _sbu(text: str) -> bytes:  # SHORT_BINUNICODE opcode
    b = text.encode()
    return b"\x8c" + bytes([len(b)]) + b


@pytest.mark.parametrize("module,name,attr,value", [
    ("training.triplane", "OSGDecoder", "class_name", "hacked"),
    ("torch._utils", "_rebuild_tensor_v2", "__defaults__", ("hacked",)),
    ("torch_utils.persistence", "_reconstruct_persistent_obj", "__kwdefaults__", {"x": 1}),
])
def test_build_on_allowed_globals_does_not_leak(tmp_path, pkl, module, name, attr, value):
    # PROTO 4; STACK_GLOBAL module.name; BUILD (None, {attr: value}) = setattr on that global itself.
    # Such edits must never reach our module-level functions/classes (later loads).
    tail = _sbu(value) if isinstance(value, str) else pickle.dumps(value, protocol=4)[2:-1]
    data = b"\x80\x04" + _sbu(module) + _sbu(name) + b"\x93N}" + _sbu(attr) + tail + b"s\x86b."
    f = tmp_path / "build.pkl"
    f.write_bytes(data)
    with pytest.raises(WrongCheckpointError):
        read_network_pickle(f)
    assert unpickle._STANDINS["training.triplane.OSGDecoder"].class_name == "training.triplane.OSGDecoder"
    assert unpickle._rebuild_tensor_v2.__defaults__ == (None,)
    assert unpickle._persistent_record.__kwdefaults__ is None
    decoder = read_network_pickle(pkl)["G_ema"].state["_modules"]["decoder"]
    assert decoder.class_name == "training.triplane.OSGDecoder"


def test_benign_official_like_pickle_loads(tmp_path, monkeypatch):
    # Same construction without a payload works, so the tests above fail for the right reason.
    f = tmp_path / "ok.pkl"
    f.write_bytes(_official_like(monkeypatch, torch.nn.Parameter(torch.arange(3.0)), "parameters"))
    off = read_official_generator(f)
    assert torch.equal(off.state_dict["w"], torch.arange(3.0)) and off.init_kwargs == {"z_dim": 1}


# ----------------------------------------------------------------------------- truncated / wrong files


@pytest.mark.parametrize("frac", [1, 2, 64, 4096, 0.25, 0.5, 0.9, -1])
def test_truncated_pickle(tmp_path, pkl, frac):
    data = pkl.read_bytes()
    n = len(data) + frac if frac == -1 else int(frac * len(data)) if isinstance(frac, float) else frac
    f = tmp_path / "cut.pkl"
    f.write_bytes(data[:n])
    with pytest.raises(TruncatedCheckpointError, match="truncated"):
        read_official_generator(f)


def _torch_zip(path: Path) -> Path:
    torch.save({"w": torch.ones(2)}, path)
    return path


@pytest.mark.parametrize(
    "name,make,match",
    [
        ("empty.pkl", lambda p: p.write_bytes(b""), "empty"),
        ("text.pkl", lambda p: p.write_text("hello, not a checkpoint\n"), "not a network pickle"),
        ("random.pkl", lambda p: p.write_bytes(bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(3)).tolist()).replace(b"\x80", b"\x00", 1)), "not a network pickle"),
        ("model.pt", lambda p: _torch_zip(p), "torch .pt"),
        ("noG.pkl", lambda p: p.write_bytes(pickle.dumps({"G": 1, "D": 2}, protocol=4)), "no 'G_ema'"),
        ("list.pkl", lambda p: p.write_bytes(pickle.dumps([1, 2], protocol=4)), "holds a list"),
        ("int_G.pkl", lambda p: p.write_bytes(pickle.dumps({"G_ema": 3}, protocol=4)), "not a persistent EG3D module"),
    ],
)
def test_wrong_files(tmp_path, name, make, match):
    f = tmp_path / name
    make(f)
    with pytest.raises(WrongCheckpointError, match=match):
        read_official_generator(f)


def test_missing_and_folder(tmp_path):
    with pytest.raises(CheckpointNotFoundError, match="no such file"):
        read_official_generator(tmp_path / "nope.pkl")
    with pytest.raises(WrongCheckpointError, match="folder"):
        read_official_generator(tmp_path)


# ----------------------------------------------------------------------------- GOAE .pt state dicts


@pytest.fixture
def encoder_pt(tmp_path, parity_dir):
    sd = load_file(parity_dir / "goae" / "tiny_encoder.safetensors")
    torch.save(sd, tmp_path / "encoder.pt")
    return tmp_path / "encoder.pt", sd


def test_pt_state_dict_roundtrip(encoder_pt, tmp_path, parity_dir):
    path, ref = encoder_pt
    afa_ref = load_file(parity_dir / "goae" / "tiny_afa.safetensors")
    torch.save(afa_ref, tmp_path / "afa.pt")
    enc, afa = load_goae_checkpoints(path, tmp_path / "afa.pt", shape_map(ref), shape_map(afa_ref))
    assert enc.keys() == ref.keys() and all(torch.equal(enc[k], ref[k]) for k in ref)
    assert afa.keys() == afa_ref.keys() and all(torch.equal(afa[k], afa_ref[k]) for k in afa_ref)


def test_pt_key_and_shape_mismatch(encoder_pt):
    path, ref = encoder_pt
    expected = shape_map(ref)
    keys = list(expected)
    expected.pop(keys[0])  # -> unexpected in the file
    expected["extra.weight"] = (3,)  # -> missing from the file
    expected[keys[1]] = (1, 2, 3)  # -> shape mismatch
    with pytest.raises(StateDictMismatchError) as e:
        load_official_state_dict(path, expected)
    msg = str(e.value)
    assert "1 missing keys: extra.weight" in msg and f"1 unexpected keys: {keys[0]}" in msg and f"{keys[1]}" in msg and "(1, 2, 3)" in msg
    assert "\n" not in msg


def test_pt_errors(tmp_path, pkl, encoder_pt):
    path, _ = encoder_pt
    data = path.read_bytes()
    for n in (10, len(data) // 2, len(data) - 5):
        (tmp_path / "cut.pt").write_bytes(data[:n])
        with pytest.raises(TruncatedCheckpointError):
            load_official_state_dict(tmp_path / "cut.pt")
    (tmp_path / "text.pt").write_text("not a checkpoint")
    with pytest.raises(WrongCheckpointError, match="not a torch checkpoint"):
        load_official_state_dict(tmp_path / "text.pt")
    with pytest.raises(WrongCheckpointError, match="plain pickle"):
        load_official_state_dict(pkl)
    torch.save([torch.ones(1)], tmp_path / "list.pt")
    with pytest.raises(WrongCheckpointError, match="flat state dict"):
        load_official_state_dict(tmp_path / "list.pt")
    torch.save({"a": 1}, tmp_path / "nontensor.pt")
    with pytest.raises(WrongCheckpointError, match="flat state dict of tensors"):
        load_official_state_dict(tmp_path / "nontensor.pt")
    with pytest.raises(CheckpointNotFoundError):
        load_official_state_dict(tmp_path / "missing.pt")


def test_pt_unsafe(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"w": torch.ones(1), "x": _evil(os.system, _touch_cmd(marker))}, tmp_path / "evil.pt")
    with pytest.raises(UnsafePickleError, match=r"posix\.system"):
        load_official_state_dict(tmp_path / "evil.pt")
    assert not marker.exists()


def test_check_state_dict_ok():
    sd = {"a": torch.zeros(2, 3)}
    check_state_dict(sd, {"a": (2, 3)})
    with pytest.raises(StateDictMismatchError, match="shape mismatches"):
        check_state_dict(sd, {"a": [3, 2]})


# ----------------------------------------------------------------------------- atomic output


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name or ".old-" in p.name)


def test_atomic_dir_success_failure_overwrite(tmp_path):
    out = tmp_path / "sub" / "out"
    with atomic_dir(out) as d:
        (d / "a.txt").write_text("1")
        assert not out.exists()
    assert (out / "a.txt").read_text() == "1"
    mask = os.umask(0)
    os.umask(mask)
    assert out.stat().st_mode & 0o777 == 0o777 & ~mask  # not mkdtemp's private 0700
    with pytest.raises(FileExistsError):
        with atomic_dir(out):
            pass
    with pytest.raises(RuntimeError):
        with atomic_dir(out, overwrite=True) as d:
            (d / "a.txt").write_text("2")
            raise RuntimeError("boom")
    assert (out / "a.txt").read_text() == "1" and _leftovers(out.parent) == []
    with atomic_dir(out, overwrite=True) as d:
        (d / "b.txt").write_text("3")
    assert sorted(p.name for p in out.iterdir()) == ["b.txt"] and _leftovers(out.parent) == []


def test_atomic_files(tmp_path):
    f = tmp_path / "x.bin"
    atomic_write_bytes(f, b"abc")
    assert f.read_bytes() == b"abc"
    mask = os.umask(0)
    os.umask(mask)
    assert f.stat().st_mode & 0o777 == 0o666 & ~mask
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(f) as tmp:
            assert tmp.suffix == ".bin" and tmp.parent == tmp_path
            tmp.write_bytes(b"half")
            raise KeyboardInterrupt
    assert f.read_bytes() == b"abc" and _leftovers(tmp_path) == []


class _FakeModel:
    """Stands in for EG3DGenerator in the atomicity tests (they must not depend on the model code)."""

    def __init__(self, fail: str | None):
        self.sd, self.fail = {"w": torch.arange(4.0)}, fail

    def state_dict(self):
        return self.sd

    def save_pretrained(self, d, safe_serialization=True):
        (Path(d) / "config.json").write_text("{}")
        if self.fail == "raise":
            (Path(d) / "diffusion_pytorch_model.safetensors").write_bytes(b"half-writ")
            raise OSError("No space left on device")
        save_file({"w": self.sd["w"] + (1 if self.fail == "corrupt" else 0)}, Path(d) / "diffusion_pytorch_model.safetensors")


@pytest.mark.parametrize("fail", ["raise", "corrupt"])
def test_convert_eg3d_is_atomic(tmp_path, monkeypatch, fail):
    monkeypatch.setattr(convert, "load_official_generator", lambda p, key="G_ema": _FakeModel(fail))
    out = tmp_path / "generator"
    with pytest.raises((OSError, CheckpointError)):
        convert_eg3d("unused.pkl", out)
    assert list(tmp_path.iterdir()) == []
    out.mkdir()
    (out / "keep.txt").write_text("old")
    with pytest.raises((OSError, CheckpointError)):
        convert_eg3d("unused.pkl", out, overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ["generator"] and (out / "keep.txt").read_text() == "old"
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]


def test_convert_eg3d_existing_out_dir(tmp_path, pkl):
    out = tmp_path / "generator"
    out.mkdir()
    with pytest.raises(FileExistsError, match="--overwrite"):
        convert_eg3d(pkl, out)
    convert_eg3d(pkl, out, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "diffusion_pytorch_model.safetensors"]
    assert _leftovers(tmp_path) == []


# ----------------------------------------------------------------------------- CLI


def test_cli_errors_are_one_line(tmp_path, capsys, pkl):
    (tmp_path / "bad.pkl").write_bytes(pkl.read_bytes()[:1000])
    assert main(["eg3d", str(tmp_path / "bad.pkl"), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("python -m goae.convert: error: ") and "truncated" in err and err.count("\n") == 1 and "Traceback" not in err
    (tmp_path / "exists").mkdir()
    assert main(["eg3d", str(pkl), str(tmp_path / "exists")]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["goae", "--eg3d", str(pkl), "--encoder", str(tmp_path / "no.pt"), "--afa", str(tmp_path / "no.pt"), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "no.pt: no such file" in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists() and _leftovers(tmp_path) == []


def test_cli_module_entry_point(tmp_path):
    r = subprocess.run([sys.executable, "-m", "goae.convert", "eg3d", str(tmp_path / "missing.pkl"), str(tmp_path / "out")],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "no such file" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "goae.convert", "eg3d"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "usage" in r.stderr


# ----------------------------------------------------------------------------- round trip through EG3DGenerator


def test_roundtrip_convert_from_pretrained(tmp_path, pkl, official, parity_dir):
    from goae.models import eg3d
    G = checkpoints.load_official_generator(pkl)
    assert G.state_dict().keys() == official.state_dict.keys()
    for k, v in G.state_dict().items():
        assert torch.equal(v, official.state_dict[k]), k
    out = convert_eg3d(pkl, tmp_path / "generator")
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "diffusion_pytorch_model.safetensors"]
    from goae.io import sha256_file
    assert f"| {Path(pkl).name} | `{sha256_file(pkl)}` |" in (out / "README.md").read_text()
    G2 = eg3d.EG3DGenerator.from_pretrained(out).eval()
    gold = load_file(parity_dir / "eg3d" / "golden_tiny.safetensors")
    with torch.no_grad():
        outs = []
        for g in (G, G2):
            ws = g.mapping(gold["z"], gold["c_cond"], truncation_psi=1, truncation_cutoff=14)
            outs.append(g.synthesis(ws, gold["c_render"], neural_rendering_resolution=32, noise_mode="const", deterministic=True))
    a, b = outs
    for k in ("image", "image_raw", "image_depth"):
        assert torch.equal(a[k], b[k]), k  # converted folder == pickle, bit for bit
        bound = T.DEPTH_MAX if k == "image_depth" else T.IMAGE_MAX  # the official code's cross-CPU spread
        assert (a[k] - gold[f"psi1.{k}"]).abs().max() <= bound, k  # and the pickle path reproduces the official G


# Encoder/AFA sizes that fit the tiny pickle's generator (w_dim 512, 32 channels at the 32x32 block):
# the converter checks that the three parts fit together.
TINY_ENCODER = dict(img_size=64, embed_dim=8, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8), window_size=4,
                    pretrained_window_sizes=(3, 3, 3, 2), w_dim=512)
TINY_AFA = dict(stage_channels=(16, 32, 64), feature_channels=32)


def test_convert_goae_with_an_empty_directions_list_ships_none(tmp_path, pkl):
    """directions=[] means no directions (it used to fail with a TypeError after the models were built).
    A digest the caller knows already (a download checked it) goes into the card as given, not hashed again."""
    from goae.io import sha256_file
    from goae.models.afa import AFA
    from goae.models.encoder import GOAEncoder

    torch.manual_seed(0)
    torch.save(GOAEncoder(**TINY_ENCODER).state_dict(), tmp_path / "encoder.pt")
    torch.save(AFA(**TINY_AFA).state_dict(), tmp_path / "afa.pt")
    out = convert.convert_goae(pkl, tmp_path / "encoder.pt", tmp_path / "afa.pt", tmp_path / "goae",
                               encoder_config=TINY_ENCODER, afa_config=TINY_AFA, directions=[],
                               known_sha256={Path(pkl).name: "ab" * 32})
    assert (out / "model_index.json").is_file() and not (out / "directions").exists()
    card = (out / "README.md").read_text()
    assert f"| {Path(pkl).name} | `{'ab' * 32}` |" in card
    assert f"| afa.pt | `{sha256_file(tmp_path / 'afa.pt')}` |" in card


def test_convert_goae_roundtrip(tmp_path, pkl, official, examples_dir):
    from goae import pipeline
    from goae.io import sha256_file
    from goae.models.afa import AFA
    from goae.models.encoder import GOAEncoder

    torch.manual_seed(0)
    enc, afa = GOAEncoder(**TINY_ENCODER).state_dict(), AFA(**TINY_AFA).state_dict()
    torch.save(enc, tmp_path / "encoder.pt")
    torch.save(afa, tmp_path / "afa.pt")
    out = convert.convert_goae(pkl, tmp_path / "encoder.pt", tmp_path / "afa.pt", tmp_path / "goae",
                               encoder_config=TINY_ENCODER, afa_config=TINY_AFA,
                               directions=examples_dir / "goae" / "ws_edit")
    assert (out / "model_index.json").is_file() and _leftovers(tmp_path) == []
    # The model card names the licence and every source file with its sha256; the human directions travel.
    card = (out / "README.md").read_text()
    assert "license_name" in card and "non-commercial" in card
    for f in (pkl, tmp_path / "encoder.pt", tmp_path / "afa.pt"):
        assert f"| {Path(f).name} | `{sha256_file(f)}` |" in card
    shipped = sorted(p.stem for p in (out / "directions").iterdir())
    assert shipped and not any(n.startswith("cat_") for n in shipped) and "age" in shipped
    mask = os.umask(0)
    os.umask(mask)
    for p in [out, *out.rglob("*")]:  # safetensors files too (safetensors writes them 0600)
        assert p.stat().st_mode & 0o777 == (0o777 if p.is_dir() else 0o666) & ~mask, p
    pipe = pipeline.GOAEPipeline.from_pretrained(out)
    assert pipe.directions_dir is not None and sorted(p.stem for p in pipe.directions_dir.iterdir()) == shipped
    for module, ref in ((pipe.encoder, enc), (pipe.afa, afa), (pipe.generator, official.state_dict)):
        sd = module.state_dict()
        assert sd.keys() == ref.keys()
        assert all(torch.equal(sd[k], ref[k]) for k in ref)
    # Swapped files: the encoder checkpoint given as AFA -> key mismatch, nothing written.
    with pytest.raises(StateDictMismatchError, match="AFA checkpoint"):
        convert.convert_goae(pkl, tmp_path / "encoder.pt", tmp_path / "encoder.pt", tmp_path / "goae2",
                             encoder_config=TINY_ENCODER, afa_config=TINY_AFA)
    assert not (tmp_path / "goae2").exists() and _leftovers(tmp_path) == []
    # Parts that do not fit together (encoder w_dim 32 for a w_dim-512 generator): refused, nothing written.
    small = dict(TINY_ENCODER, w_dim=32)
    torch.save(GOAEncoder(**small).state_dict(), tmp_path / "encoder32.pt")
    with pytest.raises(WrongCheckpointError, match="encoder w_dim 32 != generator w_dim 512"):
        convert.convert_goae(pkl, tmp_path / "encoder32.pt", tmp_path / "afa.pt", tmp_path / "goae3",
                             encoder_config=small, afa_config=TINY_AFA)
    assert not (tmp_path / "goae3").exists() and _leftovers(tmp_path) == []


# ----------------------------------------------------------------------------- hub


def test_resolve_local_folder(tmp_path):
    comp = tmp_path / "weights" / "generator"
    comp.mkdir(parents=True)
    with pytest.raises(WeightsNotFoundError, match="missing config.json and \\*.safetensors"):
        resolve_pretrained(tmp_path / "weights", subfolder="generator")
    (comp / "config.json").write_text("{}")
    with pytest.raises(WeightsNotFoundError, match="missing \\*.safetensors"):
        resolve_pretrained(comp)
    (comp / "diffusion_pytorch_model.safetensors").write_bytes(b"x")
    assert resolve_pretrained(comp) == comp
    assert resolve_pretrained(str(tmp_path / "weights"), subfolder="generator") == comp
    (tmp_path / "weights" / "model_index.json").write_text("{}")
    assert resolve_pretrained(tmp_path / "weights") == tmp_path / "weights"
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        resolve_pretrained(tmp_path / "weights", subfolder="encoder")
    with pytest.raises(WeightsNotFoundError, match="is a file"):
        resolve_pretrained(comp / "config.json")
    with pytest.raises(WeightsNotFoundError, match="neither an existing folder nor"):
        resolve_pretrained(str(tmp_path / "no" / "such" / "dir"))


def _hub_subprocess(hf_home: Path, code: str) -> subprocess.CompletedProcess:
    # huggingface_hub reads HF_HOME/HF_HUB_OFFLINE at import time: use a fresh interpreter.
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    env.pop("HF_HUB_CACHE", None)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)


def test_hub_offline_not_cached(tmp_path):
    code = ("from goae.weights.resolve import resolve_pretrained\nfrom goae.weights.errors import WeightsNotFoundError\n"
            "try:\n    resolve_pretrained('someorg/goae-ffhq', subfolder='generator')\n"
            "except WeightsNotFoundError as e:\n    print('ERR', e)\n")
    r = _hub_subprocess(tmp_path / "hf", code)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("ERR") and "offline" in r.stdout and "someorg/goae-ffhq" in r.stdout
    assert "hf download someorg/goae-ffhq" in r.stdout and "python -m goae.convert eg3d" in r.stdout


def test_hub_cached_snapshot(tmp_path):
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hf" / "hub" / "models--someorg--goae-ffhq"
    snap = repo / "snapshots" / commit
    (snap / "generator").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    (snap / "model_index.json").write_text("{}")
    (snap / "generator" / "config.json").write_text("{}")
    (snap / "generator" / "diffusion_pytorch_model.safetensors").write_bytes(b"x")
    code = ("from goae.weights.resolve import resolve_pretrained\n"
            "print(resolve_pretrained('someorg/goae-ffhq', subfolder='generator'))\n"
            "print(resolve_pretrained('someorg/goae-ffhq'))\n")
    r = _hub_subprocess(tmp_path / "hf", code)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [str(snap / "generator"), str(snap)]
