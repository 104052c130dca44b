"""goae.eval: every metric against a reference implementation on the same inputs and weights, and the run.

References: SSIM = scikit-image's structural_similarity; LPIPS = the `lpips` package's own LPIPS class (0.1.4,
installed --no-deps) with its published linear layers, over the same random trunk weights (the trunk is given to
it functionally here: lpips builds it from torchvision, which goae does not install); identity = the cosine of the
IR-SE50 embeddings computed directly; FID = the Fréchet distance with scipy.linalg.sqrtm (pytorch-fid's formula).
"""
from __future__ import annotations

import importlib.util
import json
import sys
import types
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from goae.eval import metrics as M
from goae.eval import networks as N


def _images(seed: int, n: int = 2, size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """A smooth image and a noisy, shifted copy of it, in [-1, 1] (SSIM's structure terms matter)."""
    g = torch.Generator().manual_seed(seed)
    base = F.interpolate(torch.rand(n, 3, size // 8, size // 8, generator=g), size=(size, size), mode="bicubic",
                         align_corners=False).clamp(0, 1) * 2 - 1
    other = (base.roll(1, dims=3) + 0.2 * torch.randn(base.shape, generator=g)).clamp(-1, 1)
    return base, other


# ------------------------------------------------------------------------------------------ SSIM, MSE
@pytest.mark.parametrize("shape", [(64, 64), (48, 80)])
def test_ssim_and_mse_match_references(shape):
    from skimage.metrics import structural_similarity

    g = torch.Generator().manual_seed(1)
    a = torch.rand(3, 3, *shape, generator=g) * 2 - 1
    b = (a + 0.3 * torch.randn(a.shape, generator=g)).clamp(-1, 1)
    a[2] = F.interpolate(a[2:3], scale_factor=0.25, mode="area").repeat_interleave(4, 2).repeat_interleave(4, 3)[0]
    ours = M.ssim(a, b).double().numpy()
    ref = [structural_similarity(((a[i] + 1) / 2).permute(1, 2, 0).double().numpy(),
                                 ((b[i] + 1) / 2).permute(1, 2, 0).double().numpy(), gaussian_weights=True, sigma=1.5,
                                 use_sample_covariance=False, data_range=1.0, channel_axis=2) for i in range(3)]
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-6)  # float64 both; the result is stored as float32
    assert abs(float(M.ssim(a[:1], a[:1])[0]) - 1) < 1e-6
    mse_ref = ((a.double() - b.double()) ** 2).reshape(3, -1).mean(1).numpy()
    np.testing.assert_allclose(M.mse(a, b).numpy(), mse_ref, rtol=1e-6, atol=0)


# ------------------------------------------------------------------------------------------------- LPIPS
def _functional_trunk(net: str, sd: dict):
    """torchvision's AlexNet / VGG16 `features` written out with F.conv2d, returning lpips' five ReLU taps."""
    if net == "alex":  # (conv index, stride, padding, max-pool before it)
        convs = [(0, 4, 2, False), (3, 1, 2, True), (6, 1, 1, True), (8, 1, 1, False), (10, 1, 1, False)]
        taps = {0, 3, 6, 8, 10}
    else:
        convs, taps, pools = [], {2, 7, 14, 21, 28}, {5, 10, 17, 24}
        for i in (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28):
            convs.append((i, 1, 1, i in pools))

    class Trunk(torch.nn.Module):
        def __init__(self, requires_grad=False, pretrained=True):
            super().__init__()

        def forward(self, x):
            out = []
            for i, stride, pad, pool in convs:
                if pool:
                    x = F.max_pool2d(x, 3, 2) if net == "alex" else F.max_pool2d(x, 2, 2)
                x = F.relu(F.conv2d(x, sd[f"features.{i}.weight"], sd[f"features.{i}.bias"], stride, pad))
                if i in taps:
                    out.append(x)
            return namedtuple("Outputs", ["relu1", "relu2", "relu3", "relu4", "relu5"])(*out)
    return Trunk


@pytest.fixture(scope="module")
def lpips_reference():
    """The lpips package, imported with a torchvision-free `lpips.pretrained_networks` (trunks set per test)."""
    spec = importlib.util.find_spec("lpips")
    if spec is None:
        pytest.skip("the reference `lpips` package is not installed (pip install --no-deps lpips==0.1.4)")
    pn = types.ModuleType("lpips.pretrained_networks")
    saved = {k: sys.modules.get(k) for k in ("lpips", "lpips.lpips", "lpips.trainer", "lpips.pretrained_networks")}
    sys.modules["lpips.pretrained_networks"] = pn
    import lpips
    yield lpips, pn, Path(spec.origin).parent / "weights" / "v0.1"
    for k, v in saved.items():
        if v is None:
            sys.modules.pop(k, None)
        else:
            sys.modules[k] = v


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_lpips_matches_reference_code(net, lpips_reference, tmp_path):
    lpips, pn, weights = lpips_reference
    torch.manual_seed(3)
    trunk = {k: v.clone() for k, v in N.LPIPS(net).state_dict().items() if k.startswith("features.")}
    torch.save(trunk, tmp_path / "trunk.pth")
    ours = N.LPIPS.from_pretrained(tmp_path / "trunk.pth", weights / f"{net}.pth", net)  # the published lin layers
    setattr(pn, {"alex": "alexnet", "vgg": "vgg16"}[net], _functional_trunk(net, trunk))
    ref = lpips.LPIPS(net=net, version="0.1", pretrained=True, pnet_rand=True, verbose=False)
    x, y = _images(4, n=3, size=96)
    with torch.no_grad():
        got, want = ours(x, y), ref(x, y).reshape(-1)
        same = ours(x, x)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    assert bool((got > 0).all()) and float(same.abs().max()) == 0.0


# ---------------------------------------------------------------------------------------------- identity
def test_identity_is_cosine_of_embeddings():
    torch.manual_seed(5)
    net = N.IdentityNet()
    x, y = _images(6, n=2, size=128)

    def direct(t):  # the documented crop, step by step: area-pool to 256, rows 35:223 x cols 32:220, pool to 112
        t = F.adaptive_avg_pool2d(t, (256, 256))[:, :, 35:223, 32:220]
        return net.facenet(F.adaptive_avg_pool2d(t, (112, 112)))
    with torch.no_grad():
        got = M.identity_similarity(net, x, y)
        want = F.cosine_similarity(direct(x), direct(y), dim=1)
        self_sim = M.identity_similarity(net, x, x)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    torch.testing.assert_close(self_sim, torch.ones(2), rtol=0, atol=1e-5)


# --------------------------------------------------------------------------------------------------- FID
def _fid_scipy(a: np.ndarray, b: np.ndarray) -> float:
    """pytorch-fid's calculate_frechet_distance, written out: scipy sqrtm of the covariance product."""
    from scipy import linalg

    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean, _ = linalg.sqrtm(s1.dot(s2), disp=False)
    if not np.isfinite(covmean).all():
        offset = np.eye(s1.shape[0]) * 1e-6
        covmean = linalg.sqrtm((s1 + offset).dot(s2 + offset))
    covmean = covmean.real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


@pytest.mark.parametrize("n,d", [(200, 16), (64, 48), (24, 512)])  # the last: fewer samples than dimensions
def test_fid_matches_scipy_sqrtm(n, d):
    rng = np.random.default_rng(7)
    a = rng.normal(size=(n, d)) @ rng.normal(size=(d, d))
    b = rng.normal(0.3, 1.2, size=(n, d)) @ rng.normal(size=(d, d))
    got, want = M.fid(a, b), _fid_scipy(a, b)
    assert abs(got - want) <= 1e-6 * abs(want), (got, want)  # measured: <= 7e-8 (sqrtm of a singular product)
    assert abs(M.fid(a, a)) < 1e-6 * np.trace(np.cov(a, rowvar=False))
    with pytest.raises(ValueError, match="at least 2"):
        M.fid(a[:1], b)
    mu1, s1 = M.feature_statistics(a)  # the covariance form gives the same value
    assert abs(M.frechet_distance(mu1, s1, *M.feature_statistics(b)) - want) <= 1e-6 * abs(want)


def test_inception_is_torchvisions_inception3_without_classifier(tmp_path):
    torch.manual_seed(8)
    net = N.InceptionFID()
    # torchvision's inception_v3 has 27,161,264 parameters; minus AuxLogits (3,326,696) and fc (2,049,000)
    assert sum(p.numel() for p in net.parameters()) == 21_785_568
    sd = net.state_dict()
    assert {"Conv2d_1a_3x3.conv.weight", "Mixed_5b.branch_pool.bn.running_var", "Mixed_7c.branch3x3dbl_3b.conv.weight"} <= set(sd)
    torch.save({**sd, "fc.weight": torch.zeros(1008, 2048), "fc.bias": torch.zeros(1008)}, tmp_path / "pt_inception.pth")
    loaded = N.InceptionFID.from_pretrained(tmp_path / "pt_inception.pth")
    x, _ = _images(9, n=2, size=64)
    with torch.no_grad():
        f = loaded.features(x)
        torch.testing.assert_close(f, net.features(x), rtol=0, atol=0)
    assert f.shape == (2, 2048) and bool(torch.isfinite(f).all())


def test_network_file_errors(tmp_path):
    with pytest.raises(N.MissingWeightsError, match=r"(?s)model_ir_se50\.pth.*--id-weights"):
        N.IdentityNet.from_pretrained(tmp_path / "model_ir_se50.pth", "pass it with --id-weights")
    trunc = tmp_path / "alex_trunk.pth"
    torch.save(N.LPIPS("alex").features.state_dict(), trunc)
    trunc.write_bytes(trunc.read_bytes()[:300])
    with pytest.raises(N.WeightsFileError, match=r"alex_trunk\.pth as ImageNet AlexNet.*truncated"):
        N.LPIPS.from_pretrained(trunc, trunc, "alex")
    wrong = tmp_path / "vgg_as_alex.pth"
    torch.save({f"features.{k}": v for k, v in N.LPIPS("vgg").features.state_dict().items()}, wrong)
    with pytest.raises(N.WeightsFileError, match=r"vgg_as_alex\.pth does not hold the expected ImageNet AlexNet.*wrong shapes"):
        N.LPIPS.from_pretrained(wrong, wrong, "alex")
    from safetensors.torch import save_file
    save_file({"x": torch.zeros(2)}, str(tmp_path / "inception.safetensors"))
    with pytest.raises(N.WeightsFileError, match=r"inception\.safetensors does not hold the expected FID Inception"):
        N.InceptionFID.from_pretrained(tmp_path / "inception.safetensors")


# ----------------------------------------------------------------------------------------------- the run
@pytest.fixture(scope="module")
def small_pipe():
    from goae.pipeline import load_pipeline
    return load_pipeline("random-small", seed=0)


def _dataset(root: Path) -> Path:
    """Two aligned 'crops' with labels, one image without a label, one label without an image."""
    from goae.camera import camera_label

    root.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.png", "unlabelled.png"):
        small = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
        Image.fromarray(small).resize((512, 512), Image.BICUBIC).save(root / name)
    cam = camera_label(0.0, 0.0)[0].tolist()
    labels = {"labels": [["a.png", cam], ["b.png", camera_label(0.2, 0.0)[0].tolist()], ["gone.png", cam]]}
    (root / "dataset.json").write_text(json.dumps(labels))
    return root


@pytest.mark.slow  # about ten inversions of the small random pipeline
def test_evaluate_run_report_resume(small_pipe, tmp_path, repo_examples):
    from goae.eval import EvalOptions, evaluate, load_networks

    data = _dataset(tmp_path / "data")
    nets = load_networks(random=True, inception="random", seed=0)
    opts = EvalOptions(yaws=(30.0,), sheet_rows=1)
    out = tmp_path / "out"
    lines: list[str] = []
    s = evaluate(small_pipe, [str(data), str(repo_examples / "coffee.png")], out, nets, opts, progress=False,
                 log=lines.append)
    assert (s["inputs"], s["measured"], s["skipped"]) == (5, 2, 3)
    assert s["random_weights"] is True and s["schema"] == "goae-eval/1"
    reasons = " | ".join(s["skipped_reasons"])
    assert "no camera label in dataset.json" in reasons and "file does not exist" in reasons and "No face" in reasons
    assert set(s["metrics"]) == {"mse", "lpips", "ssim", "id", "id_yaw+30"}
    assert all(np.isfinite(v["mean"]) for v in s["metrics"].values())
    assert s["fid_views"] is not None and np.isfinite(s["fid_views"])  # 2 inputs vs 2 views
    a = next(r for r in s["images"] if r["name"] == "a")
    assert a["status"] == "ok" and a["aligned_by"] == "labels" and a["seconds"] > 0
    saved = json.loads((out / "eval.json").read_text())
    assert saved["measured"] == 2 and len(saved["images"]) == 5
    csv_lines = (out / "metrics.csv").read_text().splitlines()
    assert len(csv_lines) == 6 and csv_lines[0].startswith("name,input,status,reason,mse,lpips,ssim,id,id_yaw+30")
    with Image.open(out / "report.png") as sheet:
        assert sheet.width == 180 + 128 * 3 and sheet.height > 2 * 128  # input | reconstruction | one view; best + worst
    assert {"hist_mse.png", "hist_lpips.png", "report.png"} <= set(saved["files"]["images"])
    assert "data:image/png;base64," in (out / "report.html").read_text()
    assert sum("skipped" in ln for ln in lines) == 3

    # resume: measured images are kept, skipped ones are tried again; other settings measure again
    lines.clear()
    s2 = evaluate(small_pipe, [str(data)], out, nets, opts, resume=True, progress=False, log=lines.append)
    assert sum("measured before" in ln for ln in lines) == 2 and s2["measured"] == 2
    assert s2["metrics"]["mse"]["mean"] == pytest.approx(s["metrics"]["mse"]["mean"], rel=0, abs=0)
    lines.clear()  # one labelled image (one.json), measured at another resolution: not taken from the earlier run
    (data / "one.json").write_text(json.dumps({"labels": json.loads((data / "dataset.json").read_text())["labels"][:1]}))
    s3 = evaluate(small_pipe, [str(data / "one.json")], out, load_networks(), EvalOptions(yaws=(), resolution=128),
                  resume=True, progress=False, log=lines.append)
    assert not any("measured before" in ln for ln in lines) and s3["measured"] == 1 and set(s3["metrics"]) == {"mse", "ssim"}


def test_cli_bad_network_file_goes_on(tmp_path, capsys):
    from goae.eval.cli import main

    data = _dataset(tmp_path / "data")
    bad = tmp_path / "model_ir_se50.pth"
    bad.write_bytes(b"PK\x03\x04 truncated")
    rc = main([str(data / "dataset.json"), "--out", str(tmp_path / "out"), "--weights", "random-small", "--views", "",
               "--id-weights", str(bad), "--json", "--resolution", "64"])
    cap = capsys.readouterr()
    summary = json.loads(cap.out)
    assert rc == 1 and summary["measured"] == 2 and summary["skipped"] == 2
    assert "identity (IR-SE50) is not measured: cannot read" in cap.err and "model_ir_se50.pth" in cap.err
    assert summary["networks"]["identity"].startswith("not measured: cannot read")
    assert summary["networks"]["lpips"].startswith("not measured: no LPIPS")
    assert set(summary["metrics"]) == {"mse", "ssim"}
    assert main(["x.png", "--out", str(tmp_path / "o2"), "--weights", str(tmp_path / "nowhere")]) == 2
    assert "error" in capsys.readouterr().err


def test_a_fifo_is_skipped_with_its_reason_and_the_run_goes_on(tmp_path):
    """A FIFO given by name and one listed in the labels file: never opened (opening one with no writer blocks
    forever), each a skipped image with its reason; the labelled crops are still measured."""
    import os
    import subprocess

    data = _dataset(tmp_path / "data")
    os.mkfifo(data / "pipe.png")
    labels = json.loads((data / "dataset.json").read_text())
    labels["labels"].append(["pipe.png", labels["labels"][0][1]])
    (data / "dataset.json").write_text(json.dumps(labels))
    os.mkfifo(tmp_path / "named.png")
    out = tmp_path / "out"
    root = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, "-m", "goae.eval", str(tmp_path / "named.png"), str(data), "--out", str(out),
                        "--weights", "random-small", "--views", "", "--resolution", "64", "--json"],
                       env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root)}, cwd=root,
                       capture_output=True, text=True, timeout=300)  # a hang fails here instead of blocking pytest
    summary = json.loads(r.stdout)
    assert r.returncode == 1 and (summary["measured"], summary["skipped"]) == (2, 4), r.stderr[-2000:]
    by_input = {Path(im["input"]).name: im for im in summary["images"]}
    for name in ("named.png", "pipe.png"):
        assert by_input[name]["status"] == "skipped"
        assert "is a FIFO (named pipe), not a regular file" in by_input[name]["reason"]
        assert f"{name}: skipped: " in r.stderr
    assert by_input["a.png"]["status"] == by_input["b.png"]["status"] == "ok"
    made_from = json.loads((out / "images" / by_input["a.png"]["name"] / "result.json").read_text())
    assert made_from == {"photo": str((data / "a.png").resolve())}


def test_image_names_are_stable_when_inputs_are_added(tmp_path):
    """Names are goae invert's (after the path under the folder given), independent of the inputs' order: an
    image measured before keeps its name (its images/<name>/result.json) when an input with the same base name
    is added, so --resume keeps its record and never gives it to another photo."""
    from goae.eval.runner import gather_inputs

    for folder in ("one", "two", "two/sub"):
        (tmp_path / folder).mkdir()
        Image.new("RGB", (8, 8)).save(tmp_path / folder / "x.png")
    out = tmp_path / "out"

    def names(*args):
        return {Path(it.source).relative_to(tmp_path).as_posix(): it.name
                for it in gather_inputs([str(tmp_path / a) for a in args], out)}

    assert names("two") == {"two/x.png": "x", "two/sub/x.png": "sub-x"}
    assert names("one", "two") == names("two", "one")       # not by position
    (out / "images" / "x").mkdir(parents=True)               # as evaluate leaves a measured image
    (out / "images" / "x" / "result.json").write_text(json.dumps({"photo": str((tmp_path / "two/x.png").resolve())}))
    both = names("one", "two")
    assert both["two/x.png"] == "x" and both["one/x.png"].startswith("x-") and both["two/sub/x.png"] == "sub-x"
    assert len(set(both.values())) == 3
    skipped = gather_inputs([str(tmp_path / "nothing*.png"), str(tmp_path / "gone.png")], out)
    assert [it.error for it in skipped] == ["no files match this pattern", None]   # a missing file fails when read
    assert skipped[0].name.startswith("nothing_-") and skipped[1].name == "gone"


@pytest.mark.slow  # two processes, each loading the small random pipeline
def test_torchrun_shards_match_one_process(tmp_path):
    import os
    import socket
    import subprocess

    data = _dataset(tmp_path / "data")
    args = [str(data), "--weights", "random-small", "--views", "", "--resolution", "64", "--json"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
           "WORLD_SIZE": "2", "PYTHONPATH": str(root)}
    procs = [subprocess.Popen([sys.executable, "-m", "goae.eval", *args, "--out", str(tmp_path / "sharded")],
                              env={**env, "RANK": str(r), "LOCAL_RANK": str(r)}, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for r in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [1, 0], [o[1][-2000:] for o in outs]  # rank 0 reports the skipped
    assert outs[1][0] == ""  # only rank 0 prints the summary
    sharded = json.loads(outs[0][0])
    assert sharded["processes"] == 2 and (sharded["measured"], sharded["skipped"]) == (2, 2)
    one = subprocess.run([sys.executable, "-m", "goae.eval", *args, "--out", str(tmp_path / "one")],
                         env={k: v for k, v in env.items() if k not in ("WORLD_SIZE", "MASTER_PORT")},
                         capture_output=True, text=True, timeout=600)
    single = json.loads(one.stdout)
    for a, b in zip(sharded["images"], single["images"], strict=True):
        assert (a["name"], a["status"], a["reason"]) == (b["name"], b["status"], b["reason"])
        assert a["metrics"] == pytest.approx(b["metrics"], rel=1e-5, abs=1e-6)
