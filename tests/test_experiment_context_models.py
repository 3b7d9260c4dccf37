"""The context_models experiment end to end through `run_experiment`, on stand-in BSDS500 and Kodak folders cut from
scikit-image's sample photos, with a tiny network (its bits are not a measurement, only the pipeline is)."""
import json
import pytest
from mbldm.core import sample_image, write_png
from mbldm.codec import load_codec
from mbldm.context_model import load_context_model
from mbldm.experiments import run_experiment, notebook_parameters, experiment_path

@pytest.fixture(scope='module')
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp('context_models')
    for sub, names in (('bsds500_trainval', ('astronaut', 'coffee')), ('kodak', ('chelsea', 'rocket'))):
        (root/'data'/sub).mkdir(parents=True)
        for n in names: write_png(sample_image(n)[:, :160, :240], root/'data'/sub/f'{n}.png')
    params = dict(data_dir=str(root/'data'), steps=40, batch_size=128, hidden=8)
    return run_experiment('context_models', overrides=params, run_dir=root/'run', progress=False)

def test_parameters():
    p = notebook_parameters(experiment_path('context_models'))
    assert p['run_dir'] is None and p['data_dir'] is None and p['install'] is False and p['specs'] == ['OPQ-32-8-8']
    assert p['steps'] >= 1000 and p['hidden'] == 32

def test_outputs_and_numbers(run):
    names = {p.name for p in run.iterdir()}
    assert {'context_models.json', 'bits_per_channel.png', 'context_models', 'context_models.ipynb'} <= names, names
    res = json.loads((run/'context_models.json').read_text())
    b = res['bits_per_code']['OPQ-32-8-8']
    assert 0 < b['learned'] < 8 and 0 < b['ctx'] < 8
    assert len(res['bits_per_channel']['OPQ-32-8-8']['learned']) == 6 and res['settings']['train_images'] == 2
    opq = load_codec('OPQ-32-8-8')
    cm = load_context_model(run/'context_models'/f"OPQ-32-8-8-{opq.identity[:12]}.safetensors")
    assert cm.identity == res['models']['OPQ-32-8-8']['identity'] and cm.codec_identity == opq.identity
    assert cm.recipe['made_by'] == 'mbldm run context_models' and cm.recipe['steps'] == 40 and cm.hidden == 8

def test_unshipped_spec_refused(tmp_path):
    from mbldm.experiments import ExperimentError
    with pytest.raises(ExperimentError, match="do not ship"):
        run_experiment('context_models', overrides=dict(specs=['RQ-8-8-8'], data_dir=str(tmp_path)), run_dir=tmp_path/'r', progress=False)
