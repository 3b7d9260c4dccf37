"""The train_hyperprior experiment runs end to end through papermill on BSDS500 (train) and Kodak (held out)."""
import json, time
import torch
from mbldm.checkpoints import KINDS
from mbldm.experiments import run_experiment, notebook_parameters, experiment_path, load_config, resolve_params, experiments_dir
from mbldm.metrics import load_rd_json
from mbldm.container import compress, decompress
from mbldm.core import sample_image

def test_train_hyperprior_runs(tmp_path, monkeypatch, standin_data):
    monkeypatch.setitem(KINDS, 'hyperprior', 'mbldm.hyperprior')
    t0 = time.perf_counter()
    run = run_experiment('train_hyperprior', overrides=dict(data_dir=str(standin_data), lambdas=[0.004, 0.05], steps=200, max_train_s=0, n_eval=3, eval_crop=256,
                         jpeg_qualities=[30, 75], webp_qualities=[50]), run_dir=tmp_path/'run', progress=False)
    # the notebook's own checks stay on: file bpp within max_gap (8%) of the likelihood estimate on unseen Kodak crops,
    # PSNR rising with rate, decoded files equal to the eval-mode forward (<= 1e-4)
    names = {p.name for p in run.iterdir()}
    assert {'metrics.json', 'rd.png', 'loss.png', 'rd_hyperprior.json', 'rd_jpeg.json', 'rd_webp.json', 'lambda_0.004'} <= names, names
    m = json.loads((run/'metrics.json').read_text())
    hp = m['hyperprior']
    assert hp['0.004']['steps'] == 200 and hp['0.004']['bpp_strings'] < hp['0.05']['bpp_strings']
    assert hp['0.004']['psnr'] < hp['0.05']['psnr']
    for r in hp.values(): assert abs(r['gap_strings']) < 0.08 and r['bpp_file'] > r['bpp_strings']
    rd = load_rd_json(run/'rd_hyperprior.json')
    assert len(rd['results']['bpp']) == 2 and set(m['speed_mps']) == {'hyperprior_encode', 'hyperprior_decode', 'jpeg_encode', 'jpeg_decode'}
    x = sample_image('coffee')[:, :80, :100]   # the trained checkpoint is a codec for any image
    data = compress(x, f"hyperprior:{run/'lambda_0.05'/'checkpoints'}")
    from mbldm.hyperprior import HyperpriorCodec
    y = decompress(data, HyperpriorCodec(run/'lambda_0.05'/'checkpoints'))
    assert y.shape == x.shape and (y - x).abs().mean() < 0.1
    assert time.perf_counter() - t0 < 300

def test_paper_config_is_valid():
    nb = experiment_path('train_hyperprior')
    p = resolve_params(nb, load_config(experiments_dir()/'train_hyperprior_paper.yaml'))
    assert (p['N'], p['M'], p['crop'], p['batch_size'], p['lr']) == (128, 192, 256, 16, 1e-4) and p['max_train_s'] == 0
    assert notebook_parameters(nb)['wandb_mode'] == 'disabled'
