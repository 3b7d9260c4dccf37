"""Shared pytest setup: tests never touch the network, a user's W&B account or their caches."""
import os, pytest

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("MPLBACKEND", "Agg")

@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    "An empty, private TORCH_HOME (the cache lpips/torchvision load backbones from)."
    monkeypatch.setenv("TORCH_HOME", str(tmp_path/"torch"))
    return tmp_path/"torch"
