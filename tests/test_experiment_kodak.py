"""The Kodak benchmark experiment, run end to end through `run_experiment` on two synthetic images and tiny codecs."""
import json, math
import numpy as np, pytest
from PIL import Image
from mbldm.codec import fit_codec, parse_spec, PATCH
from mbldm.experiments import run_experiment, notebook_parameters, experiment_path
from mbldm.metrics import load_rd_json
from mbldm.container import header_bytes

SIZES = [(168, 200), (170, 203)]  # one a multiple of 8, one padded; both big enough for 5-scale MS-SSIM
SPECS = {'VQ-8-8-8': {}, 'PQ-16-8-8': {}, 'OPQ-16-8-8': dict(opq_niter=2), 'RQ-16-8-8': dict(beam_size=1)}

def _image(h, w, seed):
    "Smooth colour gradients, a few waves and a little noise, as uint8 (h, w, 3)."
    r = np.random.default_rng(seed)
    y, x = np.mgrid[:h, :w] / max(h, w)
    chans = [np.sin(2 * np.pi * (f * x + g * y) + p) for f, g, p in r.uniform(0.5, 4, (3, 3))]
    img = 0.5 + 0.35 * np.stack(chans, -1) + 0.03 * r.standard_normal((h, w, 3))
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8)

@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp('kodak')
    (root/'data'/'kodak').mkdir(parents=True)
    for i, (h, w) in enumerate(SIZES): Image.fromarray(_image(h, w, i)).save(root/'data'/'kodak'/f'im{i}.png')
    imgs = sorted((root/'data'/'kodak').glob('*.png'))
    cache, files = {}, []
    for s, kw in SPECS.items():
        files.append(str(fit_codec(s, imgs, cache=cache, n_train=12_000, niter=3, **kw).save(root/f'{s}.safetensors')))
    return root, files

@pytest.fixture(scope='module')
def run(setup):
    root, files = setup
    params = dict(data_dir=str(root/'data'), codecs=files, jpeg_qualities=[30, 80], webp_qualities=[50],
                  timing_quality=75, threads=1, repeats=1)
    return run_experiment('kodak_benchmark', overrides=params, run_dir=root/'run', progress=False)

def test_parameters():
    p = notebook_parameters(experiment_path('kodak_benchmark'))
    assert p['codecs'] == ['VQ-8-8-8', 'PQ-32-8-8', 'OPQ-32-8-8', 'RQ-32-8-8'] and p['run_dir'] is None and p['n_images'] is None
    assert p['threads'] == 2 and len(p['jpeg_qualities']) >= 5

def test_outputs(run):
    names = {p.name for p in run.iterdir()}
    want = {'kodak_results.json', 'rd.png', 'rd_jpeg.json', 'rd_webp.json', 'config.yaml', 'kodak_benchmark.ipynb'}
    assert want | {f'rd_{s}.json' for s in SPECS} <= names, names
    assert (run/'rd.png').stat().st_size > 10_000

def test_rd_jsons(run):
    jpeg, webp = load_rd_json(run/'rd_jpeg.json'), load_rd_json(run/'rd_webp.json')
    assert jpeg['name'] == 'JPEG' and set(jpeg['results']) == {'bpp', 'psnr-rgb', 'ms-ssim-rgb'}
    assert len(jpeg['results']['bpp']) == 2 and len(webp['results']['bpp']) == 1
    assert jpeg['results']['bpp'][0] < jpeg['results']['bpp'][1]  # sorted by rate; q80 costs more than q30
    for s in SPECS:
        d = load_rd_json(run/f'rd_{s}.json')
        assert d['name'] == s and len(d['results']['bpp']) == 1

def test_numbers(run):
    res = json.loads((run/'kodak_results.json').read_text())
    rows = res['rows']
    assert len(rows) == len(SIZES) * (len(SPECS) + 2 + 1)
    for r in rows:
        assert math.isfinite(r['psnr_rgb']) and 10 < r['psnr_rgb'] < 80, r
        assert 0 < r['ms_ssim_rgb'] <= 1, r
    for r in (r for r in rows if r['codec'] in SPECS):
        spec = parse_spec(r['codec']); h, w = res['images'][r['image']]
        header = header_bytes('mbl', str(spec))  # container v2: header, one section header, CRC
        codes = spec.cbar * math.ceil(h / PATCH) * math.ceil(w / PATCH)
        assert r['nbytes'] == header + codes and r['bpp'] == pytest.approx(8 * (header + codes) / (h * w))
        if h % PATCH == 0 and w % PATCH == 0: assert r['bpp'] == pytest.approx(spec.bpp + 8 * header / (h * w))
    table = {t['codec']: t for t in res['throughput']['table']}
    assert set(SPECS) | {'JPEG q75', 'WebP q75'} == set(table)
    assert all(t['roundtrip_mp_s'] > 0 and t['ratio_vs_jpeg'] > 0 for t in table.values())
    assert table['JPEG q75']['ratio_vs_jpeg'] == pytest.approx(1)
    assert set(res['profile_ms_per_image']) == set(SPECS)
    assert any('FAISS' in s for s in res['profile_ms_per_image']['RQ-16-8-8'])
    assert {a['method'] for a in res['faiss_alternatives'] if a['codec'] == 'RQ-16-8-8'} >= {'library encode', 'use_beam_LUT=1'}
