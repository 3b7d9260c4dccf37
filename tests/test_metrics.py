"""Edge cases and property checks of mbldm.metrics that do not belong in the lesson notebook.

LPIPS and FID tests use STAND-IN weights/features (a randomly initialised AlexNet state dict, a weightless pooled
pixels extractor): they prove the loading and plumbing, never the metric values.
"""
import json, socket
import numpy as np
import pytest
import torch
from PIL import Image

from mbldm import metrics as M


# ---------------------------------------------------------------- PSNR
def test_psnr_one_level_offset_uint8():
    x = torch.randint(0, 255, (2, 3, 16, 16), dtype=torch.uint8)
    p = M.psnr(x, x + 1, data_range=255)
    assert p.shape == (2,)
    assert torch.allclose(p, torch.full((2,), 20 * np.log10(255), dtype=torch.float64), atol=1e-9)
    assert abs(p[0].item() - 48.13) < 5e-3


def test_psnr_reductions_and_identical():
    x = torch.rand(2, 3, 8, 8); y = x.clone(); y[:, 0] += 0.1
    none = M.psnr(x, y, data_range=1.0, channel_reduction="none")
    assert none.shape == (2, 3) and torch.isinf(none[:, 1:]).all()
    assert torch.allclose(M.psnr(x, y, data_range=1.0, channel_reduction="mean") - M.psnr(x, y, data_range=1.0, channel_reduction="sum"),
                          torch.full((2,), 10 * np.log10(3), dtype=torch.float64))
    assert torch.isinf(M.psnr(x, x, data_range=1.0)).all()
    assert M.psnr(x[0], y[0], data_range=1.0).shape == (1,)  # (C,H,W) -> one image


@pytest.mark.parametrize("kw,err,msg", [
    (dict(), TypeError, "data_range"),
    (dict(data_range=0), ValueError, "data_range"),
    (dict(data_range=1.0, channel_reduction="max"), ValueError, "channel_reduction"),
])
def test_psnr_bad_arguments(kw, err, msg):
    x = torch.rand(3, 8, 8)
    with pytest.raises(err, match=msg): M.psnr(x, x, **kw)


def test_psnr_bad_inputs():
    with pytest.raises(ValueError, match="differ in shape"): M.psnr(torch.rand(3, 8, 8), torch.rand(3, 8, 9), data_range=1.0)
    with pytest.raises(ValueError, match="expected"): M.psnr(torch.rand(8, 8), torch.rand(8, 8), data_range=1.0)
    with pytest.raises(TypeError, match="torch.Tensor"): M.psnr(np.zeros((3, 8, 8)), np.zeros((3, 8, 8)), data_range=1.0)


def test_psnr_ycbcr_scale_invariant():
    x = torch.rand(1, 3, 16, 16); y = (x + 0.03 * torch.randn_like(x)).clamp(0, 1)
    assert torch.allclose(M.psnr_ycbcr(x, y, data_range=1.0), M.psnr_ycbcr(255 * x, 255 * y, data_range=255))
    with pytest.raises(ValueError, match="3 channels"): M.psnr_ycbcr(x[:, :1], y[:, :1], data_range=1.0)


# ---------------------------------------------------------------- SSIM / MS-SSIM
def test_ssim_matches_skimage_and_sizes():
    from skimage.metrics import structural_similarity
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 40, 48, generator=g); y = (x + 0.1 * torch.rand(3, 40, 48, generator=g)).clamp(0, 1)
    sk = structural_similarity(x.permute(1, 2, 0).double().numpy(), y.permute(1, 2, 0).double().numpy(), data_range=1.0,
                               channel_axis=2, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
    assert abs(M.ssim(x, y, data_range=1.0).item() - sk) < 1e-6
    assert M.ssim(x, y, data_range=1.0, channel="y").shape == (1,)
    with pytest.raises(ValueError, match="window"): M.ssim(x[:, :8, :8], y[:, :8, :8], data_range=1.0)
    with pytest.raises(ValueError, match="channel"): M.ssim(x, y, data_range=1.0, channel="lab")


def test_ms_ssim_min_size():
    x = torch.rand(1, 3, 161, 170); y = (x + 0.05).clamp(0, 1)
    assert 0 < M.ms_ssim(x, y, data_range=1.0).item() <= 1
    with pytest.raises(ValueError, match=r"\(160, 170\).*161"): M.ms_ssim(x[..., :160, :], y[..., :160, :], data_range=1.0)


# ---------------------------------------------------------------- LPIPS (stand-in backbone weights)
@pytest.fixture
def no_network(monkeypatch):
    def refuse(*a, **k): raise OSError("network blocked in tests")
    monkeypatch.setattr(socket.socket, "connect", refuse)


def test_lpips_loads_backbone_from_torch_cache_offline(torch_home, no_network):
    """STAND-IN weights (random AlexNet saved where torchvision looks): proves the loading path, not LPIPS values."""
    import torchvision
    p = M.lpips_backbone_path("alex")
    assert p == torch_home/"hub"/"checkpoints"/"alexnet-owt-7be5be79.pth"
    p.parent.mkdir(parents=True)
    torch.save(torchvision.models.alexnet(weights=None).state_dict(), p)
    x = torch.rand(2, 3, 32, 32); y = (x + 0.2 * torch.rand_like(x)).clamp(0, 1)
    d0, d1 = M.lpips_distance(x, x), M.lpips_distance(x, y)
    assert d0.shape == (2,) and torch.allclose(d0, torch.zeros(2), atol=1e-7)
    assert (d1 > 0).all()
    assert not M.lpips_model("alex").random_backbone
    assert M.lpips_model("alex") is M.lpips_model("alex")  # cached per (net, device, file)


def test_lpips_missing_backbone_is_a_clear_error(torch_home, no_network):
    """No file in the cache: a FileNotFoundError that names the file and its folder, and no random fallback."""
    x = torch.rand(1, 3, 32, 32)
    with pytest.raises(FileNotFoundError, match="alexnet-owt-7be5be79.pth") as e: M.lpips_distance(x, x)
    assert str(torch_home/"hub"/"checkpoints") in str(e.value)
    with pytest.raises(FileNotFoundError, match="vgg16-397923af.pth"): M.lpips_distance(x, x, net="vgg")


def test_lpips_random_backbone_only_when_asked(torch_home, no_network):
    """STAND-IN: allow_random_backbone=True builds a random backbone and warns on every call."""
    x = torch.rand(1, 3, 32, 32)
    with pytest.warns(UserWarning, match="RANDOM backbone"):
        d = M.lpips_distance(x, (x + 0.1).clamp(0, 1), net="squeeze", allow_random_backbone=True)
    assert d.shape == (1,) and M.lpips_model("squeeze", allow_random_backbone=True).random_backbone


def test_lpips_refuses_pickled_code(torch_home, no_network):
    """A backbone file holding arbitrary objects is refused by the weights_only check before lpips unpickles it."""
    p = M.lpips_backbone_path("alex"); p.parent.mkdir(parents=True)
    torch.save({"features.0.weight": torch.zeros(1), "evil": socket.socket}, p)
    with pytest.raises(Exception, match="(?i)weights.only|unsupported|global"): M.lpips_model("alex")


def test_lpips_bad_net():
    with pytest.raises(ValueError, match="net must be one of"): M.lpips_backbone_path("resnet")


# ---------------------------------------------------------------- FID / KID
def test_fid_properties():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(300, 8)), rng.normal(1.0, 2.0, size=(200, 8))
    assert abs(M.fid_from_features(a, a)) < 1e-6
    assert abs(M.fid_from_features(a, b) - M.fid_from_features(b, a)) < 1e-6 * M.fid_from_features(a, b)
    assert M.fid_from_features(torch.from_numpy(a), torch.from_numpy(b)) > 1
    with pytest.raises(ValueError, match="feature sizes differ"): M.fid_from_features(a, b[:, :4])
    with pytest.raises(ValueError, match="N>=2"): M.fid_from_features(a[:1], b)


def test_kid_reproducible_and_keeps_global_rng():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(50, 8)), rng.normal(0.5, 1.0, size=(60, 8))
    np.random.seed(123); before = np.random.random()
    np.random.seed(123); k1 = M.kid_from_features(a, b, num_subsets=10); after = np.random.random()
    assert before == after  # the caller's global NumPy state is restored
    assert k1 == M.kid_from_features(a, b, num_subsets=10) > 0


def test_pooled_pixels_extractor_is_labelled():
    f = M.pooled_pixels_extractor(2)
    assert f.name == "pooled-pixels-2x2" and f(torch.full((3, 3, 299, 299), 255.0)).shape == (3, 12)
    feats, label, real = M.image_features([torch.rand(3, 20, 30) for _ in range(3)], f, device="cpu")
    assert feats.shape == (3, 12) and label == "custom:pooled-pixels-2x2" and real is False


def test_inception_is_never_downloaded(tmp_path, no_network, monkeypatch):
    """Without clean-fid's Inception file, FID needs an explicit extractor; no download is attempted."""
    if M.inception_path().exists(): pytest.skip("a real Inception file is present on this machine")
    for sub in "ab":
        (tmp_path/sub).mkdir()
        for k in range(3): Image.fromarray(np.full((32, 32, 3), 40 * k + (sub == "b"), np.uint8)).save(tmp_path/sub/f"{k}.png")
    with pytest.raises(FileNotFoundError, match="inception-2015-12-05.pt"): M.folder_fid(tmp_path/"a", tmp_path/"b", device="cpu")
    r = M.folder_fid(tmp_path/"a", tmp_path/"b", feature_extractor=M.pooled_pixels_extractor(1), device="cpu", kid=True)
    assert r["extractor"] == "custom:pooled-pixels-1x1" and r["real_metric"] is False and r["n_a"] == 3 and "kid" in r
    assert M.inception_path("legacy_pytorch").name == "pt_inception-2015-12-05-6726825d.pth"
    with pytest.raises(ValueError, match="mode"): M.inception_path("tf")


def test_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"): M.folder_fid(tmp_path/"nope", tmp_path, M.pooled_pixels_extractor(1), "cpu")
    (tmp_path/"one").mkdir(); Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path/"one"/"x.png")
    with pytest.raises(ValueError, match="at least 2"): M.folder_fid(tmp_path/"one", tmp_path/"one", M.pooled_pixels_extractor(1), "cpu")


# ---------------------------------------------------------------- crops
@pytest.mark.parametrize("h,w,n", [(512, 768, 8), (768, 512, 8), (512, 512, 5), (256, 256, 1), (383, 383, 1), (384, 384, 2), (200, 900, 0)])
def test_crop_counts(h, w, n):
    assert len(M.crop_boxes(h, w)) == n == (h // 256) * (w // 256) + max(h - 128, 0) // 256 * (max(w - 128, 0) // 256)
    assert M.crops256_half_overlap(torch.zeros(3, h, w)).shape == (n, 3, 256, 256)


def test_fid256_needs_crops():
    with pytest.raises(ValueError, match="crops"): M.fid256([torch.rand(3, 100, 100)], [torch.rand(3, 100, 100)], M.pooled_pixels_extractor(1), "cpu")
    with pytest.raises(ValueError, match="one"): M.crops256_half_overlap(torch.rand(1, 3, 256, 256))


# ---------------------------------------------------------------- bpp
def test_bpp_helpers(tmp_path):
    f = tmp_path/"x.bin"; f.write_bytes(b"\0" * 100)
    assert M.bpp_from_file(f, 10, 20) == 800 / 200 == M.bpp_from_bytes(100, 10, 20)
    assert M.bpp_from_bits(64, 8, 8) == 1.0
    with pytest.raises(FileNotFoundError): M.bpp_from_file(tmp_path/"missing", 8, 8)
    with pytest.raises(ValueError, match="positive"): M.bpp_from_bytes(10, 0, 8)


def test_bpp_from_likelihoods_forms():
    y = torch.full((2, 4, 2, 2), 0.25)  # 2 bits x 16 symbols = 32 bits per image
    expect = torch.full((2,), 32 / 64, dtype=torch.float64)
    for lk in (y, [y], (y,), {"y": y}): assert torch.allclose(M.bpp_from_likelihoods(lk, 8, 8), expect)
    assert torch.allclose(M.bpp_from_likelihoods({"y": y, "z": torch.full((2, 1, 1, 1), 0.5)}, 8, 8), expect + 1 / 64)
    with pytest.raises(ValueError, match="no likelihood"): M.bpp_from_likelihoods({}, 8, 8)


# ---------------------------------------------------------------- RD JSON
def test_rd_json_roundtrip_compressai_schema(tmp_path):
    p = M.save_rd_json(tmp_path/"sub"/"rd.json", "codec", {"bpp": [0.1, 0.2], "psnr-rgb": np.array([30.0, 32.5])}, "demo")
    raw = json.loads(p.read_text())
    assert raw == {"name": "codec", "description": "demo", "results": {"bpp": [0.1, 0.2], "psnr-rgb": [30.0, 32.5]}}
    assert M.load_rd_json(p) == raw
    assert not [q for q in p.parent.iterdir() if q.name != "rd.json"]  # no temp files left behind
    ax = M.plot_rd([p, raw], "psnr-rgb"); assert len(ax.lines) == 2
    with pytest.raises(ValueError, match="no 'ms-ssim-rgb'"): M.plot_rd(p, "ms-ssim-rgb")


@pytest.mark.parametrize("data,msg", [
    ({"name": "x"}, "missing the 'results'"),
    ({"name": "x", "results": {"psnr-rgb": [1.0]}}, "'bpp'"),
    ({"name": "x", "results": {"bpp": [1, 2], "psnr-rgb": [30]}}, "unequal length"),
    ({"name": "x", "results": {"bpp": [1, "a"]}}, "finite numbers"),
    ({"results": {"bpp": [1]}}, "name"),
])
def test_rd_json_validation(tmp_path, data, msg):
    p = tmp_path/"bad.json"; p.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=msg): M.load_rd_json(p)


def test_rd_json_rejects_inf_and_bad_files(tmp_path):
    with pytest.raises(ValueError, match="finite"): M.save_rd_json(tmp_path/"a.json", "x", {"bpp": [1.0], "psnr-rgb": [float("inf")]})
    assert not (tmp_path/"a.json").exists()
    (tmp_path/"b.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"): M.load_rd_json(tmp_path/"b.json")
    with pytest.raises(FileNotFoundError): M.load_rd_json(tmp_path/"c.json")


def test_lpips_is_differentiable_in_inputs(torch_home, no_network):
    """STAND-IN backbone: LPIPS as a loss term passes gradients to the reconstruction, none to the frozen weights."""
    x = torch.rand(1, 3, 32, 32); y = torch.rand(1, 3, 32, 32, requires_grad=True)
    with pytest.warns(UserWarning, match="RANDOM"):
        M.lpips_distance(x, y, net="squeeze", allow_random_backbone=True).sum().backward()
    assert y.grad is not None and y.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in M.lpips_model("squeeze", allow_random_backbone=True).parameters())
