"""The README's main job (`mbldm demo`) and the shipped codecs it uses."""
import json
from mbldm.cli import demo
from mbldm.codec import pretrained_codecs, load_codec, TABLE1_CODECS
from mbldm.core import sample_image, read_image
from mbldm.metrics import psnr

RQ_LADDER = ['RQ-16-8-8', 'RQ-24-8-8', 'RQ-32-8-8', 'RQ-48-8-8', 'RQ-64-8-8', 'RQ-64-16-16']

def test_table1_codecs_and_the_rq_ladder_ship_with_the_package():
    assert pretrained_codecs() == ['OPQ-32-8-8', 'PQ-32-8-8'] + RQ_LADDER + ['VQ-8-8-8']  # by kind, then rate
    assert set(TABLE1_CODECS) < set(pretrained_codecs())
    for s in pretrained_codecs():
        c = load_codec(s)
        assert str(c.spec) == s
        assert all(q.meta['pca_ordered'] for q in c.quantizers), f"{s}: shipped codebooks must be PCA-ordered"
        assert all(q.meta['n_train_used'] >= 100_000 for q in c.quantizers), f"{s}: trained on too few patches"

def test_rq_ladder_is_trained_like_the_shipped_rq():
    "Same recipe as RQ-32-8-8 (McM + flips, 1M patches per channel, greedy beam, seed 0), made by the table1 experiment."
    ref = load_codec('RQ-32-8-8').recipe
    for s in RQ_LADDER:
        r = load_codec(s).recipe
        assert {k: r[k] for k in ('n_train', 'niter', 'beam_size', 'seed', 'flip', 'pca')} == \
               {k: ref[k] for k in ('n_train', 'niter', 'beam_size', 'seed', 'flip', 'pca')}, (s, r)
        assert r['data'].startswith('McM: 18 images') and r['n_train'] == 1_000_000, (s, r)

def test_ladder_config_trains_what_ships():
    "`mbldm run table1 -f table1_ladder.yaml` trains the ladder with the settings recorded in the shipped files."
    from mbldm.experiments import experiments_dir, load_config, resolve_params
    p = resolve_params(experiments_dir()/'table1.ipynb', load_config(experiments_dir()/'table1_ladder.yaml'))
    assert sorted(p['specs'] + ['RQ-32-8-8'], key=RQ_LADDER.index) == RQ_LADDER and p['install'] is False
    for s in p['specs']:
        r = load_codec(s).recipe
        assert {k: p[k] for k in ('n_train', 'niter', 'beam_size', 'seed')} == {k: r[k] for k in ('n_train', 'niter', 'beam_size', 'seed')}, (s, r)

def test_rq_ladder_quality_grows_with_rate():
    "More residual stages, more PSNR, on a held-out photo (the McM-trained codecs never saw scikit-image's astronaut)."
    x = sample_image('astronaut')
    p = [psnr(x, c.decode(c.encode(x), size=x.shape[-2:])[0], data_range=1.).item() for c in map(load_codec, RQ_LADDER)]
    assert all(a < b for a, b in zip(p, p[1:])), dict(zip(RQ_LADDER, p))

def test_shipped_codecs_quality_ordering():
    "VQ < PQ <= OPQ <= RQ on a held-out image (the McM-trained codecs never saw scikit-image's astronaut)."
    x = sample_image('astronaut')
    codecs = {s: load_codec(s) for s in TABLE1_CODECS}
    p = {s: psnr(x, c.decode(c.encode(x), size=x.shape[-2:])[0], data_range=1.).item() for s, c in codecs.items()}
    assert p['VQ-8-8-8'] < p['PQ-32-8-8'] <= p['OPQ-32-8-8'] + 0.05 and p['OPQ-32-8-8'] <= p['RQ-32-8-8'] + 0.05, p
    assert p['OPQ-32-8-8'] > 24, p

def test_demo_default_is_the_table1_codecs(tmp_path):
    run = demo(tmp_path/'run', images=('coffee',), jpeg_qualities=(50,))
    assert json.loads((run/'report.json').read_text())['codecs'] == list(TABLE1_CODECS)

def test_demo_writes_report(tmp_path):
    run = demo(tmp_path/'run', images=('coffee',), codecs=('OPQ-32-8-8',), jpeg_qualities=(30, 80))
    rep = json.loads((run/'report.json').read_text())
    rows = {r['codec']: r for r in rep['rows']}
    assert set(rows) == {'OPQ-32-8-8', 'JPEG-q30', 'JPEG-q80'}
    r = rows['OPQ-32-8-8']
    assert r['bytes'] == (run/'coffee.OPQ-32-8-8.mbl').stat().st_size
    assert abs(r['bpp'] - 0.75) < 0.01  # the spec's rate plus a small header
    x, x_hat = sample_image('coffee'), read_image(run/'coffee.OPQ-32-8-8.png')
    assert abs(psnr(x, x_hat, data_range=1.).item() - r['psnr_rgb']) < 0.05  # the PNG holds the decoded image (8-bit)
    for f in ('reconstructions.png', 'rd.png', 'rd_jpeg.json', 'rd_OPQ-32-8-8.json'): assert (run/f).is_file(), f
    for f in ('reconstructions.png', 'rd.png'): assert read_image(run/f).shape[0] == 3  # complete PNGs
    assert not list(run.glob('.*.tmp'))

def test_figures_are_written_atomically(tmp_path, monkeypatch):
    "A figure that fails half-way leaves the old file (or none), never a partial PNG or a temporary file."
    import pytest, matplotlib.pyplot as plt
    from matplotlib.figure import Figure
    from mbldm.core import save_figure
    fig = plt.figure(); (tmp_path/'rd.png').write_bytes(b'old')
    def broken(self, fname, **kw):
        if hasattr(fname, 'write'): fname.write(b'\x89PNG partial')
        else: open(fname, 'wb').write(b'\x89PNG partial')
        raise OSError(28, 'No space left on device')
    with monkeypatch.context() as m:
        m.setattr(Figure, 'savefig', broken)
        with pytest.raises(OSError): save_figure(fig, tmp_path/'rd.png')
    assert (tmp_path/'rd.png').read_bytes() == b'old' and not list(tmp_path.glob('.*.tmp'))
    save_figure(fig, tmp_path/'rd.png'); plt.close(fig)
    assert read_image(tmp_path/'rd.png').shape[0] == 3
