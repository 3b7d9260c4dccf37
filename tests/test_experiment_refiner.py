"""The train_refiner experiment runs end to end through papermill on a tiny synthetic image folder."""
import json, time
import numpy as np, torch
from mbldm.core import write_png
from mbldm.codec import fit_codec
from mbldm.experiments import run_experiment, notebook_parameters, experiment_path, load_config, resolve_params, experiments_dir
from mbldm.refiner import load_refiner, refine

def _images(n=6, size=48, seed=0):
    "Smooth random colour images (low-frequency noise, upsampled)."
    g = torch.Generator().manual_seed(seed)
    small = torch.rand(n, 3, 6, 6, generator=g)
    return torch.nn.functional.interpolate(small, size=(size, size), mode='bicubic', align_corners=False).clamp(0, 1)

def test_train_refiner_runs(tmp_path):
    t0 = time.perf_counter()
    data = tmp_path/'data'/'synth'; data.mkdir(parents=True)
    imgs = _images(8)
    for i, x in enumerate(imgs): write_png(x, data/f'im{i}.png')
    codec = fit_codec('VQ-8-8-8', list(imgs[:4]), n_train=5000, niter=2).save(tmp_path/'codec.safetensors')
    run = run_experiment('train_refiner', overrides=dict(data_dir=str(tmp_path/'data'), dataset='synth', codec=str(codec), crop=32,
                         unet_dim=8, unet_dim_mults=[1, 2], steps=80, lr=0.004, batch_size=4, ckpt_every=40,
                         n_heldout=2, eval_crop=32, max_train_s=0, threads=1), run_dir=tmp_path/'run', progress=False)
    # check_improvement stays on: the notebook asserts that the held-out noisy decodes gain PSNR
    names = {p.name for p in run.iterdir()}
    assert {'train_refiner.ipynb', 'config.yaml', 'metrics.json', 'loss.png', 'refined.png', 'checkpoints'} <= names, names
    m = json.loads((run/'metrics.json').read_text())
    assert m['steps'] == 80 and m['n_heldout'] == 2 and m['noisy']['psnr_after'] > m['noisy']['psnr_before']
    ck = run/'checkpoints'
    assert (ck/'config.json').is_file() and (ck/'step_0000080'/'ema.safetensors').is_file()
    r = load_refiner(ck)
    assert refine(r, imgs[0]).shape == imgs[0].shape
    assert time.perf_counter() - t0 < 90

def test_paper_config_is_valid():
    nb = experiment_path('train_refiner')
    p = resolve_params(nb, load_config(experiments_dir()/'train_refiner_paper.yaml'))
    assert p['crop'] == 512 and p['max_train_s'] == 0 and p['unet_dim_mults'] == [1, 2, 4, 7]
    assert notebook_parameters(nb)['wandb_mode'] == 'disabled'
