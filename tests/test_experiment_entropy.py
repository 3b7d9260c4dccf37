"""The entropy_rd experiment end to end through `run_experiment`, on stand-in McM and Kodak folders cut from scikit-image's
sample photos, with one tiny trained RQ codec and one shipped codec."""
import json
import pytest
from mbldm.core import sample_image, write_png
from mbldm.codec import Codec
from mbldm.experiments import run_experiment, notebook_parameters, experiment_path
from mbldm.metrics import load_rd_json

@pytest.fixture(scope='module')
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp('entropy_rd')
    for sub, names in (('mcm', ('astronaut', 'coffee')), ('kodak', ('chelsea', 'rocket'))):
        (root/'data'/sub).mkdir(parents=True)
        for n in names: write_png(sample_image(n)[:, :160, :240], root/'data'/sub/f'{n}.png')
    params = dict(data_dir=str(root/'data'), specs=['RQ-16-8-8', 'RQ-32-8-8'], table_specs=['OPQ-32-8-8'], n_train=4096, niter=2,
                  jpeg_qualities=[1, 5, 20, 50, 90], webp_qualities=[50], timing_images=1, repeats=1, threads=1)
    return run_experiment('entropy_rd', overrides=params, run_dir=root/'run', progress=False)

def test_parameters():
    p = notebook_parameters(experiment_path('entropy_rd'))
    assert p['run_dir'] is None and p['data_dir'] is None and p['install'] is False and p['threads'] == 2
    assert p['models'] == ['order0', 'med', 'ctx'] and 65536 <= p['n_train'] <= 262144 and len(p['specs']) >= 4

def test_outputs_and_numbers(run):
    names = {p.name for p in run.iterdir()}
    assert {'entropy_rd.json', 'rd.png', 'rd_jpeg.json', 'rd_webp.json', 'rd_rq_ec.json', 'rd_rq_fixed.json', 'entropy_rd.ipynb'} <= names, names
    res = json.loads((run/'entropy_rd.json').read_text())
    bits = res['bits_per_code']
    assert set(bits) == {f'{s}|{m}' for s in ('RQ-16-8-8', 'RQ-32-8-8', 'OPQ-32-8-8') for m in ('order0', 'med', 'ctx')}
    assert all(0 < v < 8 for v in bits.values()) and bits['OPQ-32-8-8|ctx'] < bits['OPQ-32-8-8|order0']
    ec, fixed = load_rd_json(run/'rd_rq_ec.json'), load_rd_json(run/'rd_rq_fixed.json')
    assert fixed['results']['bpp'] == [0.5, 0.75] and len(ec['results']['bpp']) == 2
    assert all(e < f for e, f in zip(ec['results']['bpp'], fixed['results']['bpp']))  # same PSNR, fewer bits
    assert ec['results']['psnr-rgb'] == fixed['results']['psnr-rgb']
    g = res['gaps']['RQ-32-8-8']
    assert g['jpeg_psnr'] is not None and abs(g['gap_db'] - (g['jpeg_psnr'] - g['psnr'])) < 1e-9
    assert res['speed_mp_s']['RQ-32-8-8+ec'] > 0 and res['speed_mp_s']['JPEG q75'] > 0
    assert res['train_seconds'].keys() == {'RQ-16-8-8'}  # RQ-32-8-8 and OPQ-32-8-8 ship

def test_trained_codec_records_its_recipe(run):
    from safetensors import safe_open
    f = run/'codecs'/'RQ-16-8-8.safetensors'
    with safe_open(str(f), 'pt') as h: meta = json.loads(h.metadata()['mbldm.codec'])
    assert meta['recipe']['n_train'] == 4096 and meta['recipe']['made_by'] == 'mbldm run entropy_rd'
    assert str(Codec.load(f).spec) == 'RQ-16-8-8'
