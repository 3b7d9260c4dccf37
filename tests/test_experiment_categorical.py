"""The `train_categorical` experiment: its default run (real checks on) and the paper config."""
import json
import torch

from mbldm.core import read_image
from mbldm.experiments import run_experiment, experiment_path, resolve_params, load_config
from mbldm.checkpoints import load_model, sample_checkpoint
import mbldm.categorical  # registers the kind 'categorical' with the checkpoint loader


def test_paper_config_matches_the_notebook():
    nb = experiment_path('train_categorical')
    p = resolve_params(nb, load_config(nb.parent/'train_categorical_paper.yaml'))
    assert (p['image_size'], p['dim'], p['dim_mults'], p['batch_size'], p['steps']) == (512, 80, [1, 2, 4, 8], 64, 1_000_000)
    assert (p['lr'], p['ema_decay'], p['ema_every'], p['T'], p['weighting'], p['tau'], p['temperature']) == (1e-4, 0.995, 10, 1000, 'min_snr', 1.0, 1.0)


def test_train_categorical_default_run(tmp_path, standin_data):
    "The CPU default run (300 CIFAR-10 cats, 600 steps) with its checks ON: every loss term falls by more than half,"
    "argmax accuracy at t=0 above 5x chance. Only the sampling at the end is shortened."
    run = run_experiment('train_categorical', overrides=dict(
        data_dir=str(standin_data), n_samples=4, sampler='ddim', sample_steps='ddim10', n_ref=16, sample_every=300, ckpt_every=300),
        run_dir=tmp_path/"run", progress=False)
    m = json.loads((run/"metrics.json").read_text())
    assert m['steps'] == 600 and m['n_train'] == 300 and m['latent_shape'] == [6, 8, 8]
    assert m['loss_drop']['img'] > 0.5 and m['loss_drop']['eps'] > 0.5, m['loss_drop']
    assert m['argmax_accuracy']['0'] > 5/256, m['argmax_accuracy']
    for f in ("loss.png", "samples.png", "trajectory.png", "temperatures.png", "samples/sample_00003.png",
              "checkpoints/config.json", "checkpoints/codec.safetensors", "checkpoints/step_0000600/ema.safetensors"):
        assert (run/f).is_file(), f
    model, cd, c = load_model(run/"checkpoints")
    assert c['kind'] == 'categorical' and model.cfg.out_channels == 6*256 and cd.tau == 1.0
    files = sample_checkpoint(run/"checkpoints", tmp_path/"more", n=2, steps=5, temperature=2.2, device='cpu')
    assert len(files) == 2 and read_image(files[1]).shape == (3, 64, 64)
    from mbldm.cli import main
    assert main(["sample", str(run/"checkpoints"), "-o", str(tmp_path/"cli"), "-n", "1", "--steps", "3"]) == 0
    assert [p.name for p in (tmp_path/"cli").iterdir()] == ["sample_00000.png"]
