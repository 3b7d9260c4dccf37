"""Refiner: pair generation, padding/cropping, a short overfit that raises PSNR, config round trips, clear errors."""
import json
import pytest, torch
import fastcore.test as ft

from mbldm.core import sample_image
from mbldm.codec import fit_codec
from mbldm.unet import refiner_default
from mbldm.learner import Learner, CheckpointCB
from mbldm.metrics import psnr
from mbldm.refiner import (Refiner, noisy_decode, random_crops, refiner_batch, refiner_loss, refine, sample_sigmas,
                           save_refiner_config, refiner_from_settings, load_refiner)
from mbldm.checkpoints import CONFIG_FILE

TINY = refiner_default(dim=8, dim_mults=(1, 2))
def gen(s=0): return torch.Generator().manual_seed(s)

@pytest.fixture(scope='module')
def codec(): return fit_codec('VQ-8-8-8', [sample_image('coffee')[:, :128, :128]], n_train=5000, niter=2)

@pytest.fixture(scope='module')
def x(): return sample_image('astronaut')[:, 40:104, 180:244][None]  # (1,3,64,64)

def test_pairs_deterministic_and_sigma0(codec, x):
    ft.test_eq(noisy_decode(codec, x, sigma=0.), codec.decode(codec.encode(x), size=(64, 64)))
    ft.test_eq(noisy_decode(codec, x, sigma_max=0.), codec.decode(codec.encode(x), size=(64, 64)))
    ft.test_eq(noisy_decode(codec, x, generator=gen(5)), noisy_decode(codec, x, generator=gen(5)))
    imgs = [sample_image('coffee'), sample_image('chelsea')]
    a, b = refiner_batch(codec, imgs, 3, 24, generator=gen(1)), refiner_batch(codec, imgs, 3, 24, generator=gen(1))
    ft.test_eq(a[0], b[0]); ft.test_eq(a[1], b[1])
    torch.manual_seed(7); c = refiner_batch(codec, imgs, 3, 24)
    torch.manual_seed(7); ft.test_eq(refiner_batch(codec, imgs, 3, 24)[0], c[0])  # global RNG when no generator

def test_pairs_odd_sizes_and_sigmas(codec):
    y = noisy_decode(codec, torch.rand(2, 3, 21, 35), sigma=torch.tensor([0., .05]), generator=gen())
    ft.test_eq(y.shape, (2, 3, 21, 35))
    s = sample_sigmas(1000, 0.02, gen())
    assert 0 <= s.min() and s.max() <= 0.02 and abs(s.mean().item() - 0.01) < 1e-3

def test_bad_inputs(codec):
    ft.test_fail(lambda: noisy_decode(codec, torch.rand(3, 16, 16) * 2), contains='[0,1]')
    ft.test_fail(lambda: noisy_decode(codec, torch.rand(2, 4, 16, 16)), contains='C in (3,)')
    ft.test_fail(lambda: noisy_decode(codec, torch.zeros(3, 16, 16, dtype=torch.uint8)), contains='float')
    ft.test_fail(lambda: sample_sigmas(2, -1.), contains='sigma_max')
    ft.test_fail(lambda: random_crops([], 1, 8), contains='no images')
    ft.test_fail(lambda: refine(Refiner(TINY), [1, 2]), contains='tensor')
    ft.test_fail(lambda: Refiner(refiner_default(channels=6)), contains='RGB')

def test_refine_shapes_odd_sizes():
    r = Refiner(TINY)
    for shape in [(3, 17, 23), (2, 3, 9, 64), (1, 3, 3, 5)]:
        ft.test_eq(refine(r, torch.rand(shape)).shape, torch.Size(shape))
    r2 = Refiner(refiner_default(dim=8, dim_mults=(1, 2, 2, 2)), residual=False)  # factor 8
    y = refine(r2, torch.rand(1, 3, 13, 30))
    ft.test_eq(y.shape, (1, 3, 13, 30)); assert 0 <= y.min() and y.max() <= 1
    assert r.training and r2.training  # refine restores the mode

def test_overfit_raises_psnr(codec):
    torch.manual_seed(0)
    imgs = [sample_image('astronaut')[:, :256, :256]]
    xn, x0 = refiner_batch(codec, imgs, 4, 32, 0.02, generator=gen(2))
    r = Refiner(TINY)
    Learner(r, refiner_loss, lambda: (xn, x0), lr=3e-3).fit(60)
    before = psnr(x0 / 2 + .5, xn / 2 + .5, data_range=1.).mean()
    after = psnr(x0 / 2 + .5, refine(r, xn / 2 + .5), data_range=1.).mean()
    assert after > before + 0.3, (before, after)

def test_loss_weights():
    r, xn, x0 = Refiner(TINY), torch.rand(2, 3, 16, 16) * 2 - 1, torch.rand(2, 3, 16, 16) * 2 - 1
    a, b = refiner_loss(r, (xn, x0), 1., 0.), refiner_loss(r, (xn, x0), 0., 2.)
    torch.testing.assert_close(a['loss'], a['l1']); torch.testing.assert_close(b['loss'], 2 * (1 - b['ssim']))

def test_config_round_trip(tmp_path):
    for cfg, res in [(TINY, True), (refiner_default(), False)]:
        r = Refiner(cfg, residual=res)
        s = json.loads(save_refiner_config(tmp_path/'a', r, sigma_max=0.01).read_text())
        assert (s['format'], s['kind']) == (2, 'refiner')
        r2 = refiner_from_settings(s['network'])
        ft.test_eq(r2.cfg, cfg); ft.test_eq(r2.residual, res); ft.test_eq(s['sigma_max'], 0.01)
    ft.test_fail(lambda: refiner_from_settings({'unet': {'dim': 8, 'bogus': 1}}), contains='bogus')
    ft.test_fail(lambda: refiner_from_settings({}), contains="'unet'")

def test_load_refiner_folders(tmp_path):
    r = Refiner(TINY); xn = torch.rand(2, 3, 16, 16) * 2 - 1
    ck = tmp_path/'checkpoints'
    save_refiner_config(ck, r)
    Learner(r, refiner_loss, lambda: (xn, xn.clamp(-.5, .5)), lr=1e-2, cbs=[CheckpointCB(ck, every=2)]).fit(3)
    ft.test_fail(lambda: load_refiner(ck), contains='ema=False')   # trained without EMA
    for p in (ck, ck/'step_0000003'):
        r2 = load_refiner(p, use_ema=False)
        for k, v in r.state_dict().items(): ft.test_eq(r2.state_dict()[k], v)
        assert not r2.training
    ft.test_fail(lambda: load_refiner(tmp_path/'nope'), contains='does not exist')
    (tmp_path/'w').mkdir(); (ck/'step_0000003'/'model.safetensors').rename(tmp_path/'w'/'model.safetensors')
    ft.test_fail(lambda: load_refiner(tmp_path/'w', use_ema=False), contains=CONFIG_FILE)
    (ck/CONFIG_FILE).write_text('{"format": 99, "unet": {}}')
    ft.test_fail(lambda: load_refiner(ck, use_ema=False), contains='format 99')
