"""The entropy_rd experiment end to end through `run_experiment`, on a stand-in Kodak folder cut from scikit-image's
sample photos, with shipped codecs and one codec file."""
import json
import pytest
from mbldm.core import sample_image, write_png
from mbldm.codec import load_codec, pretrained_codecs
from mbldm.experiments import run_experiment, notebook_parameters, experiment_path, ExperimentError
from mbldm.metrics import load_rd_json
from mbldm.context_model import shipped_context_model

@pytest.fixture(scope='module')
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp('entropy_rd')
    (root/'data'/'kodak').mkdir(parents=True)
    for n in ('chelsea', 'rocket'): write_png(sample_image(n)[:, :160, :240], root/'data'/'kodak'/f'{n}.png')
    load_codec('RQ-24-8-8').save(root/'my-rq.safetensors')  # a codec file, as `mbldm run table1` writes one
    return root

@pytest.fixture(scope='module')
def run(data):
    params = dict(data_dir=str(data/'data'), specs=['RQ-16-8-8', str(data/'my-rq.safetensors'), 'RQ-32-8-8'], table_specs=['OPQ-32-8-8'],
                  jpeg_qualities=[1, 5, 20, 50, 90], webp_qualities=[50], timing_images=1, repeats=1, threads=1)
    return run_experiment('entropy_rd', overrides=params, run_dir=data/'run', progress=False)

def test_parameters_measure_the_shipped_ladder():
    p = notebook_parameters(experiment_path('entropy_rd'))
    assert p['run_dir'] is None and p['data_dir'] is None and p['threads'] == 2 and p['measure_threads'] == 1
    assert p['models'] == ['order0', 'med', 'ctx', 'learned'] and len(p['specs']) >= 4
    assert set(p['specs'] + p['table_specs']) <= set(pretrained_codecs())  # nothing is trained at the defaults
    assert not {'n_train', 'install', 'niter'} & set(p)  # codecs are trained by table1 only

def test_outputs_and_numbers(run):
    names = {p.name for p in run.iterdir()}
    assert {'entropy_rd.json', 'rd.png', 'rd_jpeg.json', 'rd_webp.json', 'rd_rq_ec.json', 'rd_rq_ec_ctx.json', 'rd_rq_fixed.json', 'entropy_rd.ipynb'} <= names, names
    res = json.loads((run/'entropy_rd.json').read_text())
    bits = res['bits_per_code']
    shipped = {'RQ-16-8-8': 'RQ-16-8-8', 'my-rq': 'RQ-24-8-8', 'RQ-32-8-8': 'RQ-32-8-8', 'OPQ-32-8-8': 'OPQ-32-8-8'}
    learned = {k for k, s in shipped.items() if shipped_context_model(load_codec(s)) is not None}  # a codec file finds its model by identity
    assert 'OPQ-32-8-8' in learned and set(res['context_models']) == learned
    assert set(bits) == {f'{s}|{m}' for s in shipped for m in ('order0', 'med', 'ctx')} | {f'{s}|learned' for s in learned}
    assert all(0 < v < 8 for v in bits.values()) and bits['OPQ-32-8-8|ctx'] < bits['OPQ-32-8-8|order0']
    assert bits['OPQ-32-8-8|learned'] < bits['OPQ-32-8-8|ctx']
    assert {g['model'] for g in res['gaps_ctx'].values()} == {'ctx'}
    assert {s: g['model'] for s, g in res['gaps'].items()} == {s: 'learned' if s in learned else 'ctx' for s in ('RQ-16-8-8', 'my-rq', 'RQ-32-8-8')}
    ec, fixed = load_rd_json(run/'rd_rq_ec.json'), load_rd_json(run/'rd_rq_fixed.json')
    assert fixed['results']['bpp'] == [0.5, 0.625, 0.75] and len(ec['results']['bpp']) == 3
    assert all(e < f for e, f in zip(ec['results']['bpp'], fixed['results']['bpp']))  # same PSNR, fewer bits
    assert ec['results']['psnr-rgb'] == fixed['results']['psnr-rgb']
    g = res['gaps']['RQ-32-8-8']
    assert g['jpeg_psnr'] is not None and abs(g['gap_db'] - (g['jpeg_psnr'] - g['psnr'])) < 1e-9
    assert [v > 0 for k, v in res['speed_mp_s'].items() if k.startswith('RQ-32-8-8+ec (')] == [True] and res['speed_mp_s']['JPEG q75'] > 0
    c = res['codecs']
    assert c['my-rq'] == {'spec': 'RQ-24-8-8', 'identity': load_codec('RQ-24-8-8').identity, 'recipe': load_codec('RQ-24-8-8').recipe}
    assert c['RQ-16-8-8']['recipe']['n_train'] == 1_000_000 and not list(run.glob('codecs'))  # loaded, not trained

def test_a_spec_that_does_not_ship_names_table1(data):
    with pytest.raises(ExperimentError, match=r'no shipped codec RQ-40-8-8.*mbldm run table1'):
        run_experiment('entropy_rd', overrides=dict(data_dir=str(data/'data'), specs=['RQ-40-8-8']), run_dir=data/'bad', progress=False)
