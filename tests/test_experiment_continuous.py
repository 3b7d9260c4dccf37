"""The `train_continuous` experiment end to end through `run_experiment`, on a tiny synthetic image folder."""
import json
import pytest
import torch

from mbldm.core import sample_image, write_png, read_image
from mbldm.codec import Codec
from mbldm.quantizers import Quantizer
from mbldm.experiments import run_experiment, experiment_path, resolve_params, load_config
from mbldm.checkpoints import load_model, sample_checkpoint


@pytest.fixture(scope="module")
def codec_file(tmp_path_factory):
    "An OPQ-32-8-8 codec with random codebooks (instant), saved to a file."
    g = torch.Generator().manual_seed(0)
    def q(kind, m): return Quantizer.from_state_dict(
        {'codebooks': torch.rand(m, 256, 64 // m, generator=g) * 255, 'rotation': torch.eye(64)}, {'kind': kind, 'm': m, 'd': 64})
    return Codec('OPQ-32-8-8', [q('OPQ', 4), q('VQ', 1), q('VQ', 1)]).save(tmp_path_factory.mktemp("codec")/"opq.safetensors")


def test_paper_config_matches_the_notebook():
    nb = experiment_path('train_continuous')
    p = resolve_params(nb, load_config(nb.parent/'train_continuous_paper.yaml'))
    assert (p['image_size'], p['dim'], p['dim_mults'], p['batch_size'], p['steps']) == (512, 80, [1, 2, 4, 8], 64, 1_000_000)
    assert (p['lr'], p['ema_decay'], p['ema_every'], p['snr_gamma'], p['T']) == (1e-4, 0.995, 10, 5.0, 1000)


def test_train_continuous_runs(tmp_path, codec_file):
    data = tmp_path/"data"/"tiny_cats"; data.mkdir(parents=True)
    for i, name in enumerate(['astronaut', 'coffee', 'chelsea', 'rocket', 'camera', 'astronaut']):
        write_png(sample_image(name)[:, 40*i:40*i + 48, 60:108], data/f"img{i}.png")
    run = run_experiment('train_continuous', overrides=dict(
        data_dir=str(tmp_path/"data"), dataset='tiny_cats', image_size=32, codec=str(codec_file), dim=8, dim_mults=[1, 2],
        steps=160, batch_size=4, lr=6e-3, ckpt_every=80, sample_every=80, n_samples=3, sampler='ddim', sample_steps='ddim5',
        n_ref=6, T=50), run_dir=tmp_path/"run", progress=False)
    # the notebook's own check stays on (min_loss_drop=0.5): the loss must fall by more than half
    assert (run/"train_continuous.ipynb").is_file() and (run/"config.yaml").is_file()
    m = json.loads((run/"metrics.json").read_text())
    assert m['steps'] == 160 and m['loss_drop'] > 0.5 and m['n_samples'] == 3 and m['latent_shape'] == [6, 4, 4]
    assert m['fid']['real_metric'] or 'STAND-IN' in m['fid']['label']
    assert m['fid']['n_a'] == 3 and m['fid']['n_b'] == 6 and 'kid' in m['fid']
    assert sorted(p.name for p in (run/"samples").iterdir()) == [f"sample_{i:05d}.png" for i in range(3)]
    assert read_image(run/"samples"/"sample_00000.png").shape == (3, 32, 32)
    for f in ("loss.png", "samples.png", "trajectory.png", "progress/samples_step_0000160.png", "latents/index.json",
              "checkpoints/config.json", "checkpoints/codec.safetensors", "checkpoints/step_0000160/ema.safetensors"):
        assert (run/f).is_file(), f
    model, ld, c = load_model(run/"checkpoints")
    assert model.cfg.dim == 8 and ld.T == 50 and c['latent_shape'] == [6, 4, 4]
    files = sample_checkpoint(run/"checkpoints", tmp_path/"more", n=2, steps=3, device='cpu')
    assert len(files) == 2 and read_image(files[1]).shape == (3, 32, 32)
    # the same through the command line (`mbldm sample`)
    from mbldm.cli import main
    assert main(["sample", str(run/"checkpoints"), "-o", str(tmp_path/"cli"), "-n", "2", "--steps", "3"]) == 0
    assert sorted(p.name for p in (tmp_path/"cli").iterdir()) == ["sample_00000.png", "sample_00001.png"]
    assert main(["sample", str(tmp_path/"nothing-here"), "-o", str(tmp_path/"x")]) == 2
