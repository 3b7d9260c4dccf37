"""Continuous latent diffusion: one-batch overfit, sampling shapes and code ranges, self-conditioning on/off,
checkpoint config round trip, sampling a checkpoint to PNGs, labelled stand-in FID."""
import json
import pytest
import torch

from mbldm.codec import Codec
from mbldm.quantizers import Quantizer
from mbldm.core import read_image
from mbldm.unet import Unet, tiny
from mbldm.learner import Learner, EMACB, CheckpointCB, smooth
from mbldm.latents import unit_to_codes
from mbldm.learner import SampleGridCB
from mbldm.metrics import sample_fid
from mbldm.checkpoints import save_config, load_model, sample_checkpoint, CONFIG_FILE
from mbldm.continuous import LatentDiffusion, model_config, generate, trajectory

SHAPE = (6, 8, 8)


@pytest.fixture(scope="module")
def codec(random_codec): return random_codec  # conftest.py: random OPQ-32-8-8 codebooks


def net(self_condition=True, seed=0):
    torch.manual_seed(seed)
    return Unet(tiny(channels=6, self_condition=self_condition, dim=16, dim_mults=(1, 2, 2)))


def smooth_latents(n=8, seed=0):
    "Smooth, image-like latents in [-1, 1]."
    g = torch.Generator().manual_seed(seed)
    lo = torch.rand(n, 6, 2, 2, generator=g) * 2 - 1
    return torch.nn.functional.interpolate(lo, size=SHAPE[1:], mode='bilinear', align_corners=True)


def test_one_batch_overfit_halves_the_loss():
    torch.manual_seed(0)
    ld, model, z0 = LatentDiffusion(), net(), smooth_latents(4)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3, betas=(0.9, 0.99))
    losses = []
    for _ in range(100):
        loss = ld.loss(model, z0)['loss']
        opt.zero_grad(); loss.backward(); opt.step(); losses.append(loss.item())
    s = smooth(losses, 0.9)
    assert s[-1] < 0.5 * s[9], (s[9], s[-1])


@pytest.mark.parametrize("sampler,steps", [("ddpm", 5), ("ddim", "ddim4"), ("ddpm", None)])
def test_sample_shape_and_code_range(sampler, steps):
    ld = LatentDiffusion(T=20, schedule='cosine')
    z = ld.sample(net(), 3, SHAPE, steps=steps, sampler=sampler, generator=torch.Generator().manual_seed(0))
    assert z.shape == (3, *SHAPE) and z.abs().max() <= 1
    k = unit_to_codes(z)
    assert k.dtype == torch.int64 and 0 <= k.min() and k.max() <= 255


def test_sampling_is_seeded_and_restores_train_mode():
    ld, model = LatentDiffusion(T=20), net()
    model.train()
    a = ld.sample(model, 2, SHAPE, steps=4, generator=torch.Generator().manual_seed(3))
    b = ld.sample(model, 2, SHAPE, steps=4, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and model.training
    with pytest.raises(ValueError, match="sampler"): ld.sample(model, 1, SHAPE, sampler='euler')


def test_generate_decodes_images(codec):
    imgs = generate(LatentDiffusion(T=20), net(), codec, 3, SHAPE, batch_size=2, steps=3)
    assert imgs.shape == (3, 3, 64, 64) and 0 <= imgs.min() and imgs.max() <= 1


class Spy(torch.nn.Module):
    "Wrap a Unet and record the self-conditioning input of every call."
    def __init__(self, m): super().__init__(); self.m, self.cfg, self.seen = m, m.cfg, []
    def forward(self, x, t, x_self_cond=None, cond=None):
        self.seen.append(None if x_self_cond is None else x_self_cond.detach().clone())
        return self.m(x, t, x_self_cond=x_self_cond)


def test_self_conditioning_toggles():
    z0, t, eps = smooth_latents(4), torch.tensor([10, 300, 600, 900]), torch.randn(4, *SHAPE)
    off = Spy(net(False))
    LatentDiffusion(self_condition=False).loss(off, z0, t, eps)
    assert off.seen == [None]                                    # one pass, no extra input
    never = Spy(net(True))
    LatentDiffusion(self_cond_p=0.).loss(never, z0, t, eps)
    assert len(never.seen) == 1 and not never.seen[0].any()      # zeros, no estimate pass
    always = Spy(net(True))
    LatentDiffusion(self_cond_p=1.).loss(always, z0, t, eps)
    assert len(always.seen) == 2 and always.seen[1].abs().sum() > 0  # the first pass's estimate is fed back
    sampling = Spy(net(True))
    LatentDiffusion(T=20).sample(sampling, 1, SHAPE, steps=3)
    assert not sampling.seen[0].any() and sampling.seen[1].abs().sum() > 0
    with pytest.raises(ValueError, match="self_condition"): LatentDiffusion(self_condition=False).loss(net(True), z0)
    with pytest.raises(ValueError, match="self_cond_p"): LatentDiffusion(self_cond_p=2.)
    with pytest.raises(ValueError, match="objective"): LatentDiffusion(objective='score')


@pytest.mark.parametrize("objective", ["x0", "v"])
def test_other_objectives_train(objective):
    ld = LatentDiffusion(objective=objective, T=50)
    out = ld.loss(net(), smooth_latents(2))
    assert out['loss'].ndim == 0 and torch.isfinite(out['loss'])
    out['loss'].backward()


def fit_and_save(tmp_path, codec, steps=3):
    ld = LatentDiffusion(T=30, schedule='linear', snr_gamma=4.)
    model, z0 = net(), smooth_latents(4)
    ck = tmp_path/'checkpoints'
    save_config(ck, model_config(ld, model.cfg, SHAPE, codec=codec, image_size=64), codec=codec)
    learn = Learner(model, ld.loss_fn, lambda: z0, lr=1e-3, cbs=[EMACB(decay=0.5, every=1), CheckpointCB(ck, every=steps)])
    learn.fit(steps)
    return ld, learn, ck


def test_checkpoint_config_round_trip(tmp_path, codec):
    ld, learn, ck = fit_and_save(tmp_path, codec)
    c = json.loads((ck/CONFIG_FILE).read_text())
    assert c['latent_shape'] == list(SHAPE) and c['codec_identity'] == codec.identity and c['image_size'] == 64
    assert (c['format'], c['kind'], c['method']['snr_gamma']) == (2, 'continuous', 4.)
    m, ld2, c2 = load_model(ck)
    assert m.cfg == learn.model.cfg and ld2.settings() == ld.settings() and not m.training
    assert torch.equal(ld2.sched.abar, ld.sched.abar)
    x, t = torch.randn(2, *SHAPE), torch.tensor([3, 20])
    with torch.no_grad():
        assert torch.allclose(m(x, t), learn.ema.model(x, t))
        raw, _, _ = load_model(ck/'step_0000003', ema=False)
        assert torch.allclose(raw(x, t), learn.model.eval()(x, t))
        assert not torch.allclose(raw(x, t), m(x, t))


def test_sample_checkpoint_writes_pngs(tmp_path, codec):
    _, _, ck = fit_and_save(tmp_path, codec)
    files = sample_checkpoint(ck, tmp_path/'out', n=3, steps=4, seed=1, batch_size=2, device='cpu')
    assert [f.name for f in files] == ['sample_00000.png', 'sample_00001.png', 'sample_00002.png']
    assert read_image(files[0]).shape == (3, 64, 64)
    again = sample_checkpoint(ck, tmp_path/'out2', n=3, steps=4, seed=1, batch_size=2, device='cpu')
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(files, again))


def test_checkpoint_errors(tmp_path, codec):
    _, _, ck = fit_and_save(tmp_path, codec)
    other = Codec('OPQ-32-8-8', [Quantizer.from_state_dict({'codebooks': q.codebooks + 1, 'rotation': q.rotation}, q.meta)
                                 for q in codec.quantizers])
    with pytest.raises(ValueError, match="not the one the model was trained with"):
        sample_checkpoint(ck, tmp_path/'o', n=1, steps=2, codec=other, device='cpu')
    (ck/CONFIG_FILE).write_text('{"format": 1}')
    with pytest.raises(ValueError, match="without a 'unet' field"): load_model(ck)
    (ck/CONFIG_FILE).write_text('{"format": 2, "kind": "continuous"}')
    with pytest.raises(ValueError, match="missing field"): load_model(ck)
    (ck/CONFIG_FILE).unlink()
    with pytest.raises(FileNotFoundError, match=CONFIG_FILE): load_model(ck)
    (tmp_path/'nothing').mkdir()
    with pytest.raises(FileNotFoundError, match="no checkpoint"): load_model(tmp_path/'nothing')
    with pytest.raises(FileNotFoundError, match="does not exist"): load_model(tmp_path/'missing')


def test_trajectory_frames():
    ld = LatentDiffusion(T=100)
    frames = trajectory(ld, net(), SHAPE, n=2, n_frames=11, generator=torch.Generator().manual_seed(0))
    assert [t for t, _, _ in frames] == [99, 89, 79, 69, 59, 49, 40, 30, 20, 10, 0]
    assert frames[0][1].shape == (2, *SHAPE) and frames[-1][2].abs().max() <= 1


def test_sample_grid_callback(tmp_path):
    z0 = smooth_latents(2)
    cb = SampleGridCB(lambda m: torch.rand(4, 3, 8, 8), every=2, dir=tmp_path)
    Learner(net(), LatentDiffusion(T=10).loss_fn, lambda: z0, cbs=[cb]).fit(4)
    assert [s for s, _ in cb.grids] == [2, 4] and (tmp_path/'samples_step_0000004.png').is_file()


def test_sample_fid_labels_the_stand_in(tmp_path):
    from mbldm.core import write_png
    from mbldm.metrics import inception_path
    g = torch.Generator().manual_seed(0)
    (tmp_path/'a').mkdir(); (tmp_path/'b').mkdir()
    for i in range(4):
        write_png(torch.rand(3, 32, 32, generator=g), tmp_path/'a'/f'{i}.png')
        write_png(torch.rand(3, 32, 32, generator=g) * 0.5, tmp_path/'b'/f'{i}.png')
    r = sample_fid(tmp_path/'a', tmp_path/'b')
    assert {'fid', 'kid', 'label', 'extractor', 'real_metric'} <= set(r)
    if not inception_path().exists(): assert not r['real_metric'] and 'STAND-IN' in r['label'] and 'pooled' in r['extractor']
    assert r['fid'] > sample_fid(tmp_path/'a', tmp_path/'a')['fid']
