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
