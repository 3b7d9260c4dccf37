"""The train_cdc experiment runs end to end through papermill on BSDS500 (train) and Kodak crops (held out)."""
import json, time
from mbldm.checkpoints import KINDS
from mbldm.experiments import run_experiment, notebook_parameters, experiment_path, load_config, resolve_params, experiments_dir
from mbldm.metrics import load_rd_json

def test_train_cdc_runs(tmp_path, monkeypatch, standin_data):
    monkeypatch.setitem(KINDS, 'cdc', 'mbldm.cdc')
    t0 = time.perf_counter()
    run = run_experiment('train_cdc', overrides=dict(data_dir=str(standin_data), warmup_steps=60, lambdas=[1e-5, 1e-2], steps_per_lambda=60, n_eval=2, eval_crop=64,
                         decode_steps=5, gammas=[0.0, 1.0], timing_steps=[1, 5]), run_dir=tmp_path/'run', progress=False)
    # the notebook's own checks stay on: bpp falls as lambda grows; one file (one bpp) for every gamma
    m = json.loads((run/'metrics.json').read_text())
    lam = m['lambdas']
    assert lam['0.01']['bpp_strings'] < lam['1e-05']['bpp_strings'] and lam['0.01']['steps'] == 60 and m['warmup']['steps'] == 60
    sw = m['gamma_sweep']
    assert sw['0']['bpp'] == sw['1']['bpp'] and sw['0']['psnr'] != sw['1']['psnr']
    assert 'RANDOM' in m['perceptual_proxy'] or m['perceptual_proxy'] == 'LPIPS-alex'
    assert set(m['decode_seconds']) == {'1', '5'}
    assert {'loss.png', 'gamma_sweep.png', 'rd_cdc.json', 'warmup', 'lambda_0.01'} <= {p.name for p in run.iterdir()}
    assert len(load_rd_json(run/'rd_cdc.json')['results']['bpp']) == 2
    assert time.perf_counter() - t0 < 400

def test_paper_config_is_valid():
    nb = experiment_path('train_cdc')
    p = resolve_params(nb, load_config(experiments_dir()/'train_cdc_paper.yaml'))
    assert (p['comp_dim'], p['unet_dim'], p['context_channels'], p['crop'], p['batch_size'], p['lambdas'], p['decode_steps']) == (64, 64, 64, 256, 4, [0.0032], 65)
    assert notebook_parameters(nb)['wandb_mode'] == 'disabled'
