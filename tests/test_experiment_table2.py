"""The `table2` experiment on given (untrained, tiny) checkpoints of the three kinds: the plumbing of the Table-2 protocol."""
import json
import torch
from safetensors.torch import save_file

from mbldm.experiments import run_experiment, experiment_path, notebook_parameters
from mbldm.checkpoints import save_config
from mbldm.unet import Unet, UnetConfig, tiny
from mbldm.continuous import LatentDiffusion, model_config as continuous_config
from mbldm.categorical import CategoricalDiffusion, model_config as categorical_config
from mbldm.refiner import Refiner, refiner_config


def _step(dir, model):
    "A checkpoint step folder holding `model`'s weights as both raw and EMA weights."
    step = dir/"step_0000001"; step.mkdir(parents=True)
    for f in ("model.safetensors", "ema.safetensors"): save_file(model.state_dict(), step/f)
    return step


def test_table2_parameters():
    p = notebook_parameters(experiment_path('table2'))
    assert p['temperatures'] == [1.0, 2.2] and p['continuous'] is None and p['categorical'] is None and p['refiner'] is None


def test_table2_runs_on_given_checkpoints(tmp_path):
    torch.manual_seed(0)
    cfg = tiny(channels=6, self_condition=True)
    cont = Unet(cfg); save_config(tmp_path/"cont", continuous_config(LatentDiffusion(T=20), cfg, (6, 8, 8), codec='OPQ-32-8-8'))
    ccfg = tiny(channels=6, out_channels=6*256, self_condition=True)
    cat = Unet(ccfg); save_config(tmp_path/"cat", categorical_config(CategoricalDiffusion(T=20), ccfg, (6, 8, 8), codec='OPQ-32-8-8'))
    ref = Refiner(tiny(time_emb=None, mid_attn=False)); save_config(tmp_path/"ref", refiner_config(ref))
    from mbldm.core import sample_image, write_png
    data = tmp_path/"data"/"tiny_cats"; data.mkdir(parents=True)    # no ../shared needed
    for i, name in enumerate(['astronaut', 'coffee', 'chelsea', 'rocket', 'camera', 'astronaut']):
        write_png(sample_image(name)[:, 40*i:40*i + 80, 60:140], data/f"img{i}.png")
    run = run_experiment('table2', overrides=dict(
        continuous=str(_step(tmp_path/"cont", cont)), categorical=str(_step(tmp_path/"cat", cat)), refiner=str(_step(tmp_path/"ref", ref)),
        n_samples=3, sample_steps=4, n_ref=6, data_dir=str(tmp_path/"data"), dataset='tiny_cats'), run_dir=tmp_path/"run", progress=False)
    t = json.loads((run/"table2.json").read_text())
    assert list(t['rows']) == ['Continuous', 'Continuous + Refiner', 'Categorical Rev. (tau=1.0)', 'Categorical Rev. (tau=2.2)']
    for r in t['rows'].values():
        assert r['n_samples'] == 3 and r['n_ref'] == 6 and r['fid'] == r['fid'] and ('STAND-IN' in r['label'] or 'Inception' in r['label'])
        assert 0 <= r['code_jsd_mean'] <= 1 and len(r['code_jsd_per_channel']) == 6
        assert r['hf_energy_ratio'] > 0 and r['diversity_ratio'] > 0 and r['seconds_per_sample'] > 0
    assert t['rows']['Categorical Rev. (tau=2.2)']['paper_fid_lsun_cat'] == 13.75
    assert t['rows']['Categorical Rev. (tau=2.2)']['paper_fid_lsun_church'] is None
    md = (run/"table2.md").read_text()
    assert md.count('\n| ') == 4 and 'Continuous + Refiner' in md
    assert len(list((run/"samples").iterdir())) == 4
