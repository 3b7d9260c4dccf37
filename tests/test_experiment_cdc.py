"""The train_cdc experiment runs end to end through papermill on BSDS500 (train) and Kodak crops (held out)."""
import json, time
from mbldm.checkpoints import KINDS
from mbldm.experiments import run_experiment, notebook_parameters, experiment_path, load_config, resolve_params, experiments_dir
from mbldm.metrics import load_rd_json

def test_train_cdc_default_from_shipped_model(tmp_path, monkeypatch, standin_data):
    monkeypatch.setitem(KINDS, 'cdc', 'mbldm.cdc')
    t0 = time.perf_counter()
    run = run_experiment('train_cdc', overrides=dict(data_dir=str(standin_data), steps_per_lambda=20, n_eval=2, eval_crop=64,
                         decode_steps=5, gammas=[0.0, 0.8, 1.0], timing_steps=[1, 5]), run_dir=tmp_path/'run', progress=False)
    # the notebook's own checks stay on: bpp falls as lambda grows (3 lambdas); one file (one bpp) for every gamma;
    # PSNR and the perceptual proxy move with gamma
    m = json.loads((run/'metrics.json').read_text())
    assert m['init_ckpt'] == 'tiny' and m['warmup']['steps'] > 1000 and len(m['lambdas']) >= 3
    b = [r['bpp_strings'] for r in m['lambdas'].values()]
    assert all(x > y for x, y in zip(b, b[1:])) and all(r['steps'] == 20 for r in m['lambdas'].values())
    sw = m['gamma_sweep']
    assert sw['0']['bpp'] == sw['1']['bpp'] and sw['0']['psnr'] != sw['1']['psnr']
    assert 'RANDOM' in m['perceptual_proxy'] or m['perceptual_proxy'] == 'LPIPS-alex'
    assert set(m['decode_seconds']) == {'1', '5'}
    assert {'loss.png', 'gamma_sweep.png', 'gamma_images.png', 'rd_cdc.json'} <= {p.name for p in run.iterdir()}
    assert len(load_rd_json(run/'rd_cdc.json')['results']['bpp']) == len(b)
    assert time.perf_counter() - t0 < 400

def test_train_cdc_warmup_from_scratch_and_resume(tmp_path, monkeypatch, standin_data):
    monkeypatch.setitem(KINDS, 'cdc', 'mbldm.cdc')
    kw = dict(data_dir=str(standin_data), init_ckpt=None, comp_dim=8, context_channels=8, unet_dim=8, unet_dim_mults=[1, 2],
              lambdas=[1e-2], steps_per_lambda=2, n_eval=1, eval_crop=64, decode_steps=2, gammas=[0.0, 1.0], timing_steps=[1],
              check_rate=False, check_gamma=False, ema_decay=0.99)
    run_experiment('train_cdc', overrides=kw | dict(warmup_steps=3), run_dir=tmp_path/'run', progress=False)
    run = run_experiment('train_cdc', overrides=kw | dict(warmup_steps=5, resume=True), run_dir=tmp_path/'run', progress=False)
    m = json.loads((run/'metrics.json').read_text())
    assert m['warmup']['steps'] == 5 and m['lambdas']['0.01']['steps'] == 2   # the warm-up continued from step 3
    c = json.loads((run/'warmup'/'checkpoints'/'config.json').read_text())
    assert c['method']['weighting'] == 'const' and c['ema'] is True and (run/'warmup'/'checkpoints'/'step_0000005'/'ema.safetensors').is_file()

def test_paper_config_is_valid():
    nb = experiment_path('train_cdc')
    p = resolve_params(nb, load_config(experiments_dir()/'train_cdc_paper.yaml'))
    assert (p['comp_dim'], p['unet_dim'], p['context_channels'], p['crop'], p['batch_size'], p['lambdas'], p['decode_steps']) == (64, 64, 64, 256, 4, [0.0032], 65)
    assert p['init_ckpt'] is None and p['weighting'] == 'min_snr' and p['ema_decay'] == 0.999
    assert notebook_parameters(nb)['wandb_mode'] == 'disabled'
