"""DIRAC: sampler facts (zero net -> x_hat, oracle -> x, DIRAC-100 = DDIM, late start = 20 calls), thresholds, checkpoints."""
import json, math
import numpy as np, pytest, torch
from mbldm.core import sample_image
from mbldm.basecodecs import base_codec
from mbldm.adm import ADMUnet, adm_tiny
from mbldm.diffusion import sample_ddim, space_timesteps, Predictor
from mbldm.checkpoints import KINDS, load_model
from mbldm.dirac import (Dirac, enhance, residual, as_cond, dirac_batch, sample_rates, codec_roundtrip, threshold_table,
                         thresholds_for, collect_thresholds, save_dirac_config, load_dirac, jpeg_quality, model_thresholds)

torch.set_num_threads(1)

@pytest.fixture(autouse=True)
def dirac_kind(monkeypatch): monkeypatch.setitem(KINDS, 'dirac', 'mbldm.dirac')

@pytest.fixture(scope='module')
def pair():
    x = sample_image('astronaut')[:, 100:124, 150:174][None]   # 24x24: not a multiple of 16, so padding is exercised
    x_hat, _ = base_codec('jpeg:10')[0].roundtrip(x, 10)
    return x, x_hat

class Counting(torch.nn.Module):
    "Wraps a network (or a fixed prediction) and counts its calls."
    def __init__(self, net=None, r0=None):
        super().__init__(); self.net, self.r0, self.calls, self.cfg = net, r0, 0, adm_tiny(channel_mult=(1, 2, 2, 2, 2))
        self.p = torch.nn.Parameter(torch.zeros(1))
    def forward(self, x, t, cond):
        self.calls += 1
        return self.net(x, t, cond) if self.net is not None else self.r0.expand_as(x)

def _randomised(seed=0):
    torch.manual_seed(seed)
    net = ADMUnet(adm_tiny())
    for p in net.parameters():
        if p.ndim > 1 and p.abs().sum() == 0: torch.nn.init.normal_(p, std=0.05)
    return net.eval()

def test_untrained_returns_base_reconstruction(pair):
    x, x_hat = pair
    net, m = ADMUnet(adm_tiny()), Dirac()
    for n in (1, 2, 50, 100):
        assert torch.equal(enhance(net, m, x_hat, n=n, generator=torch.Generator().manual_seed(n)), x_hat)
    assert torch.equal(enhance(net, m, x_hat, n=90, late=True), x_hat)

def test_oracle_returns_original_for_every_n_and_late_start(pair):
    x, x_hat = pair
    m = Dirac()
    r0 = torch.nn.functional.pad(residual(x, x_hat), (0, 8, 0, 8), mode='replicate')   # padded to 32 = the wrapper's factor
    orc = Counting(r0=r0)
    for n, late in [(1, False), (7, False), (100, False), (81, True), (100, True)]:
        assert (enhance(orc, m, x_hat, n=n, late=late) - x).abs().max() < 1e-6, (n, late)
    # and the thresholds must contain the residual for this to hold: a too-narrow clip breaks it
    assert (enhance(orc, m, x_hat, n=1, clip=(-0.01, 0.01)) - x).abs().max() > 0.01

def test_dirac_100_is_plain_ddim_and_calls(pair):
    x, x_hat = pair
    m, net = Dirac(), Counting(net=_randomised())
    net.cfg = net.net.cfg
    g = lambda: torch.Generator().manual_seed(3)
    a = enhance(net, m, x_hat, n=100, generator=g())
    assert net.calls == 100
    # plain DDIM written out: 100 respaced steps, eta 0, clip [-1, 1], original timesteps to the network
    seen = []
    den = Predictor(net, m.sched, 'x0', cond=as_cond(x_hat))
    r = sample_ddim(lambda x_, t, p: (seen.append(int(t[0])), den(x_, t))[1], torch.randn((1, 3, 24, 24), generator=g()),
                    m.sched, space_timesteps(1000, 'ddim100'), clip=(-1., 1.))
    assert seen == list(range(990, -1, -10))
    assert torch.allclose(a, (x_hat + r).clamp(0, 1), atol=1e-6)
    assert not torch.allclose(a, x_hat, atol=1e-3)   # the randomised net does change the image
    net.calls = 0
    b = enhance(net, m, x_hat, n=100, late=True, generator=g())
    assert net.calls == 20 and not torch.allclose(a, b)
    net.calls = 0; enhance(net, m, x_hat, n=1); assert net.calls == 1
    net.calls = 0; enhance(net, m, x_hat, n=85, late=True); assert net.calls == 5
    with pytest.raises(ValueError, match='81..100'): enhance(net, m, x_hat, n=80, late=True)
    with pytest.raises(ValueError, match='1..100'): enhance(net, m, x_hat, n=0)

def test_late_start_std_and_early_stop_estimate():
    from mbldm.dirac import _start
    m = Dirac()
    t, s = _start(m, True)
    assert t == 190 and abs(s - math.sqrt(1 - m.sched.abar[190].item())) < 1e-12 and abs(s - 0.5629) < 1e-4

def test_per_sample_clip_ranges():
    x = torch.full((2, 3, 16, 16), 0.5)
    orc = Counting(r0=torch.full((1, 3, 16, 16), 0.3))
    out = enhance(orc, Dirac(), x, n=1, clip=(torch.tensor([-0.1, -0.2]), torch.tensor([0.1, 0.2])))
    assert torch.allclose(out[0], torch.full_like(out[0], 0.6)) and torch.allclose(out[1], torch.full_like(out[1], 0.7))

def test_threshold_table_fraction_and_lookup():
    g = torch.Generator().manual_seed(0)
    res = {r: s * torch.randn(400_000, generator=g) for r, s in ((0.1, 0.2), (0.4, 0.05), (1.6, 0.01))}
    for p in (0.9, 0.995):
        t = threshold_table(res, p, 'mbl')
        for r, lo, hi in zip(t['rates'], t['lo'], t['hi']):
            inside = ((res[r] >= lo) & (res[r] <= hi)).float().mean().item()
            assert abs(inside - p) < 0.002, (r, p, inside)
            assert lo < 0 < hi and abs(lo + hi) < 0.05 * hi
    t = threshold_table(res, 0.995, 'mbl')
    lo, hi = thresholds_for(t, [0.09, 0.2, 0.3, 1.0, 5.0])
    # log distance: 0.2 is exactly between 0.1 and 0.4 (ties go to the first), 0.3 -> 0.4, 1.0 -> 1.6 (log ratio 0.47 < 0.92)
    assert hi.tolist() == pytest.approx([t['hi'][0], t['hi'][0], t['hi'][1], t['hi'][2], t['hi'][2]])
    with pytest.raises(ValueError, match='positive'): thresholds_for(t, [0])
    with pytest.raises(ValueError, match='p='): threshold_table(res, 1.5)
    c = {'thresholds': t}
    assert model_thresholds(c, 'jpeg', 0.4) is None and model_thresholds(c, 'mbl', None) is None
    assert model_thresholds(c, 'mbl', 0.4)[1].item() == pytest.approx(t['hi'][1])

def test_jpeg_thresholds_shrink_with_quality():
    imgs = [(sample_image(n) * 255).to(torch.uint8) for n in ('astronaut', 'coffee')]
    t = collect_thresholds(base_codec('jpeg:10')[0], imgs, [5, 30, 90], n_crops=4, crop=32, generator=torch.Generator().manual_seed(0))
    assert t['codec'] == 'jpeg' and t['hi'][0] > t['hi'][1] > t['hi'][2] > 0 > t['lo'][0]

def test_batches_rates_and_bits():
    jpeg = base_codec('jpeg:10')[0]
    g = torch.Generator().manual_seed(0)
    q = sample_rates(jpeg, 500, (5, 50), g)
    assert min(q) == 5 and max(q) == 50 and sum(v < 16 for v in q) > sum(v > 16 for v in q) * 0.8
    with pytest.raises(ValueError, match='rate_range'): sample_rates(jpeg, 3, (0, 5))
    x = sample_image('coffee')[:, :32, :64][None].repeat(2, 1, 1, 1)
    x_hat, bits = codec_roundtrip(jpeg, x, [5, 90])
    assert bits[0] < bits[1] and (x - x_hat[0]).abs().mean() > (x - x_hat[1]).abs().mean()
    imgs = [(sample_image('coffee') * 255).to(torch.uint8)]
    r0, cond = dirac_batch(jpeg, imgs, batch_size=3, crop=32, generator=torch.Generator().manual_seed(1))
    assert r0.shape == (3, 3, 32, 32) and cond['cond'].shape == (3, 3, 32, 32)
    x_rec = (cond['cond'] + 1) / 2 + r0
    assert x_rec.min() > -1e-6 and x_rec.max() < 1 + 1e-6 and r0.abs().max() > 0

def test_lpips_term_labelled_stand_in(torch_home):
    m = Dirac(lpips_weight=1.)
    net = ADMUnet(adm_tiny())
    batch = dirac_batch(base_codec('jpeg:10')[0], [(sample_image('coffee') * 255).to(torch.uint8)], 2, 32)
    with pytest.raises(FileNotFoundError, match='backbone'): m.loss_fn(net, batch)
    with pytest.warns(UserWarning, match='RANDOM backbone'):
        out = Dirac(lpips_weight=1., lpips_stand_in=True).loss_fn(net, batch)
    assert out['loss'] > out['mse'] and 'lpips' in out
    assert 'lpips' not in Dirac().loss_fn(net, batch)

def test_settings_and_checkpoint_round_trip(tmp_path):
    with pytest.raises(ValueError, match='late_skip'): Dirac(late_skip=100)
    with pytest.raises(ValueError, match='self-conditioning'): Dirac(self_condition=True)
    m = Dirac()
    assert (m.schedule, m.T, m.objective, m.weighting, m.steps) == ('linear', 1000, 'x0', 'const', 'ddim100')
    net = _randomised()
    t = threshold_table({10: torch.linspace(-.1, .1, 101)}, 0.9, 'jpeg')
    save_dirac_config(tmp_path, net, m, 'jpeg', rate_range=(5, 50), thresholds=t)
    from safetensors.torch import save_file
    save_file(net.state_dict(), tmp_path/'model.safetensors')   # a folder with config.json + weights
    net2, m2, c = load_dirac(tmp_path, ema=False)
    assert m2 == m and c['thresholds'] == t and c['base_codec'] == 'jpeg' and c['rate_range'] == [5, 50]
    x = torch.randn(1, 3, 8, 8)
    assert torch.equal(net(x, 5, x), net2(x, 5, x))
    c2 = json.loads((tmp_path/'config.json').read_text()); c2['kind'] = 'refiner'; c2['network'] = {'unet': {}}
    (tmp_path/'config.json').write_text(json.dumps(c2))
    with pytest.raises(ValueError): load_dirac(tmp_path, ema=False)

def test_jpeg_quality_estimate(tmp_path):
    from PIL import Image
    a = (sample_image('coffee') * 255).byte().permute(1, 2, 0).numpy()
    for q in (1, 5, 33, 50, 51, 88, 100):
        Image.fromarray(a).save(tmp_path/'a.jpg', quality=q)
        assert jpeg_quality(tmp_path/'a.jpg') == (q, True) or (q == 100 and jpeg_quality(tmp_path/'a.jpg')[1])
    Image.fromarray(a).save(tmp_path/'a.png')
    with pytest.raises(ValueError, match='not a JPEG'): jpeg_quality(tmp_path/'a.png')
