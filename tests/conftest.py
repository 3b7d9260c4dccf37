"""Shared pytest setup: tests never touch the network, a user's W&B account or their caches."""
import os, pytest

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("MPLBACKEND", "Agg")

@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    "An empty, private TORCH_HOME (the cache lpips/torchvision load backbones from)."
    monkeypatch.setenv("TORCH_HOME", str(tmp_path/"torch"))
    return tmp_path/"torch"

@pytest.fixture(scope="session")
def random_codec():
    "An OPQ-32-8-8 codec with random codebooks on the 0..255 scale: instant, and every code gets used."
    import torch
    from mbldm.quantizers import Quantizer
    from mbldm.codec import Codec
    g = torch.Generator().manual_seed(0)
    def q(kind, m): return Quantizer.from_state_dict(
        {'codebooks': torch.rand(m, 256, 64 // m, generator=g) * 255, 'rotation': torch.eye(64)}, {'kind': kind, 'm': m, 'd': 64})
    return Codec('OPQ-32-8-8', [q('OPQ', 4), q('VQ', 1), q('VQ', 1)])

@pytest.fixture(scope="session")
def standin_data(tmp_path_factory):
    """Small STAND-IN copies of the data sets the experiments default to, cut from scikit-image's sample photos, so
    that the experiment tests need no `../shared/data`: `cifar10_cat` (300 images 72x72), `bsds500_trainval`
    (40 images 192x192), `kodak` (6 images 256x384). They test the pipelines, not the papers' numbers."""
    import torch
    from mbldm.core import sample_image, write_png
    root = tmp_path_factory.mktemp("standin_data")
    photos = [sample_image(n) for n in ('astronaut', 'coffee', 'chelsea', 'rocket', 'camera')]
    g = torch.Generator().manual_seed(0)
    def crops(name, n, h, w):
        d = root/name; d.mkdir()
        for i in range(n):
            im = photos[i % len(photos)]
            if im.shape[-2] < h or im.shape[-1] < w: im = torch.nn.functional.interpolate(im[None], scale_factor=max(h/im.shape[-2], w/im.shape[-1]) + 0.01, mode='bilinear', align_corners=False)[0].clamp(0, 1)
            r, c = (int(torch.randint(0, s - t + 1, (), generator=g)) for s, t in ((im.shape[-2], h), (im.shape[-1], w)))
            x = im[:, r:r + h, c:c + w]
            write_png(x.flip(-1) if i % 2 else x, d/f"{name}_{i:04d}.png")
    crops('cifar10_cat', 300, 72, 72); crops('bsds500_trainval', 40, 192, 192); crops('kodak', 6, 256, 384)
    return root
