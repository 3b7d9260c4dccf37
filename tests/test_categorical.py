"""The categorical reverse process (mbldm.categorical): perfect-logit oracle, draws, soft decoding, loss identities, checkpoint config."""
import json
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from scipy.stats import chi2

from mbldm.categorical import (CategoricalDiffusion, logits_view, gumbel, gumbel_softmax, sample_codes, expected_unit,
                               argmax_accuracy, LossTermsCB, model_config, from_config, generate, trajectory)
from mbldm.diffusion import q_sample
from mbldm.latents import codes_to_unit
from mbldm.learner import Learner
from mbldm.checkpoints import save_config, load_model, sample_checkpoint
from safetensors.torch import save_file
from mbldm.unet import Unet, tiny

K = 256


class PerfectLogits(nn.Module):
    "Logit `margin` on the true code of every position, 0 elsewhere (ignores its input)."
    def __init__(self, codes, margin=1000.):
        super().__init__()
        self.codes, self.margin, self.p = codes, margin, nn.Parameter(torch.zeros(()))
    def forward(self, x, t, x_self_cond=None):
        oh = F.one_hot(self.codes[:len(x)], K).permute(0, 1, 4, 2, 3).flatten(1, 2).float()
        return oh*self.margin + 0*self.p


class FixedLogits(nn.Module):
    "Always the same (B, Cbar*K, h, w) logits."
    def __init__(self, logits):
        super().__init__()
        self.logits, self.p = logits, nn.Parameter(torch.zeros(()))
    def forward(self, x, t, x_self_cond=None): return self.logits[:len(x)] + 0*self.p


@pytest.fixture(scope="module")
def codes():
    return torch.randint(0, K, (3, 6, 4, 4), generator=torch.Generator().manual_seed(0))


def chi_square(counts, p):
    "Pearson statistic of observed `counts` against probabilities `p`."
    e = counts.sum()*p
    return float(((counts - e)**2/e).sum())


def test_perfect_logits_give_zero_loss(random_codec, codes):
    cd = CategoricalDiffusion(T=100, codec=random_codec)
    for weighting in ('const', 'min_snr'):
        cd = CategoricalDiffusion(T=100, weighting=weighting, codec=random_codec)
        r = cd.loss(PerfectLogits(codes), codes_to_unit(codes), t=torch.tensor([0, 1, 99]))
        for k in ('loss', 'img', 'eps', 'eps_mse'): assert r[k].item() < 1e-6, (weighting, k, r[k].item())
    # a wrong code at one position makes both terms positive
    wrong = codes.clone(); wrong[0, 0, 0, 0] = (wrong[0, 0, 0, 0] + 128) % K
    r = cd.loss(PerfectLogits(wrong), codes_to_unit(codes), t=torch.tensor([0, 1, 99]))
    assert r['img'].item() > 1e-4 and r['eps_mse'].item() > 1e-4


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_perfect_logits_sampling_returns_the_true_codes(random_codec, codes, sampler):
    cd = CategoricalDiffusion(T=50, codec=random_codec)
    for temp in (0., 0.3, 1.):
        out = cd.sample(PerfectLogits(codes), 3, (6, 4, 4), sampler=sampler, eta=1. if sampler == 'ddim' else 0.,
                        temperature=temp, generator=torch.Generator().manual_seed(1))
        assert out.dtype == torch.int64 and torch.equal(out, codes), (sampler, temp)
    # with a small margin, temperature 1 does not reproduce the codes: the test can see a wrong draw
    out = cd.sample(PerfectLogits(codes, margin=2.), 3, (6, 4, 4), sampler=sampler, temperature=1.,
                    generator=torch.Generator().manual_seed(1))
    assert not torch.equal(out, codes)


def test_temperature_draws_match_softmax(codes):
    k = 6
    l = torch.tensor([1.5, 0.2, -1., 0.7, -0.3, 2.])
    logits = l.view(1, 1, k, 1, 1).expand(1, 1, k, 200, 200)
    crit = chi2.ppf(0.999, k - 1)
    for temp in (2., 1.):
        c = torch.bincount(sample_codes(logits, temp, torch.Generator().manual_seed(3)).flatten(), minlength=k).double()
        assert chi_square(c, (l/temp).softmax(0).double()) < crit, temp
        other = 1. if temp == 2. else 2.
        assert chi_square(c, (l/other).softmax(0).double()) > crit   # the test distinguishes temperatures
    assert torch.equal(sample_codes(logits, 0.), logits.argmax(2))
    with pytest.raises(ValueError, match='temperature'): sample_codes(logits, -0.5)
    with pytest.raises(ValueError, match='logits'): sample_codes(l, 1.)


def test_gumbel_argmax_frequencies_match_softmax():
    k = 5
    l = torch.tensor([0.3, -1.2, 1.1, 0., 0.8]).double()
    g = gumbel((40_000, k), torch.Generator().manual_seed(4), dtype=torch.float64)
    c = torch.bincount((l + g).argmax(1), minlength=k).double()
    crit = chi2.ppf(0.999, k - 1)
    assert chi_square(c, l.softmax(0)) < crit
    assert chi_square(c, torch.full((k,), 1/k, dtype=torch.float64)) > crit
    y = gumbel_softmax(l.view(1, 1, k, 1, 1).expand(2, 3, k, 4, 4), 0.7, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(y.sum(2), torch.ones(2, 3, 4, 4, dtype=torch.float64))
    g = gumbel((2, 3, k, 4, 4), torch.Generator().manual_seed(9), dtype=torch.float64)
    y = gumbel_softmax(l.view(1, 1, k, 1, 1).expand(2, 3, k, 4, 4), 1e-3, generator=torch.Generator().manual_seed(9))
    assert torch.equal(y.argmax(2), (l.view(1, 1, k, 1, 1) + g).argmax(2)) and y.max(2).values.min() > 0.99
    with pytest.raises(ValueError, match='tau'): gumbel_softmax(l, 0.)


def test_soft_decoding_of_one_hot_is_the_unclamped_hard_decoding(random_codec, codes):
    oh = F.one_hot(codes, K).permute(0, 1, 4, 2, 3).float()
    cd = CategoricalDiffusion(codec=random_codec)
    assert torch.equal(cd.decode_image(oh), cd.decode_image(codes))
    assert torch.equal(cd.decode_image(codes), 2*random_codec.decode(codes, clamp=False) - 1)
    assert torch.equal(expected_unit(oh), codes_to_unit(codes))
    with pytest.raises(ValueError, match='codec'): CategoricalDiffusion().decode_image(codes)


def test_image_term_gradcheck(random_codec):
    "float64 gradcheck of logits -> Gumbel-softmax -> soft decoding (fixed Gumbel noise)."
    logits = torch.randn(1, 6, K, 1, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 0.1
    logits.requires_grad_(True)
    f = lambda l: random_codec.decode_soft(gumbel_softmax(l, 0.8, generator=torch.Generator().manual_seed(5)))
    assert torch.autograd.gradcheck(f, (logits,), eps=1e-6, atol=1e-5)


def test_eps_term_is_snr_weighted_z0_error(random_codec, codes):
    logits = torch.randn(3, 6*K, 4, 4, generator=torch.Generator().manual_seed(1))*3
    t = torch.tensor([0, 10, 40])
    for w in ('const', 'min_snr'):
        cd = CategoricalDiffusion(T=50, weighting=w, self_condition=False, codec=random_codec)
        z0 = codes_to_unit(codes)
        r = cd.loss(FixedLogits(logits), z0, t=t, generator=torch.Generator().manual_seed(2))
        snr = cd.sched.snr[t].float()
        err = ((r['x0_hat'].detach() - z0)**2).flatten(1).mean(1)
        torch.testing.assert_close(r['eps_mse'], (snr*err).mean(), rtol=2e-3, atol=0)
        weight = snr if w == 'const' else snr.clamp(max=5.)
        torch.testing.assert_close(r['eps'], (weight*err).mean(), rtol=2e-3, atol=0)
        torch.testing.assert_close(r['loss'], r['img'] + r['eps'])


def test_loss_trains_a_tiny_net_and_logs_each_term(random_codec, codes):
    torch.manual_seed(0)
    cd = CategoricalDiffusion(T=100, codec=random_codec)
    net = Unet(tiny(channels=6, out_channels=6*K, self_condition=True, dim_mults=(1, 2)))
    t, eps = torch.tensor([2, 20, 60]), torch.randn(3, 6, 4, 4, generator=torch.Generator().manual_seed(1))
    fixed = lambda m, z0: cd.loss(m, z0, t=t, eps=eps, generator=torch.Generator().manual_seed(2))   # one fixed draw: overfit
    learn = Learner(net, fixed, lambda: codes_to_unit(codes), lr=3e-3, cbs=[LossTermsCB()], seed=0)
    learn.fit(40)
    terms = learn.loss_terms.terms
    assert set(terms) == {'loss', 'img', 'eps', 'eps_mse'} and all(len(v) == 40 for v in terms.values())
    assert learn.loss_terms.drop('img', 5) > 0.1 and learn.loss_terms.drop('eps', 5) > 0.5, {k: learn.loss_terms.drop(k, 5) for k in terms}
    img_only = CategoricalDiffusion(T=100, eps_weight=0., codec=random_codec)
    grads = torch.autograd.grad(img_only.loss(net, codes_to_unit(codes))['loss'], net.final_conv.weight)[0]
    assert grads.abs().sum() > 0                       # the image term alone reaches the logit head
    acc = argmax_accuracy(cd, net, codes_to_unit(codes), 0, torch.Generator().manual_seed(0))
    assert 0 <= acc <= 1
    with pytest.raises(ValueError, match='image target'):
        cd.loss(net, codes_to_unit(codes), image=torch.rand(3, 3, 16, 16))


def test_sampling_is_reproducible_and_reports_logits(random_codec):
    cd = CategoricalDiffusion(T=30, codec=random_codec)
    torch.manual_seed(0)
    net = Unet(tiny(channels=6, out_channels=6*K, self_condition=True, dim_mults=(1, 2)))
    run = lambda s, **kw: cd.sample(net, 2, (6, 2, 2), steps=6, generator=torch.Generator().manual_seed(s), **kw)
    assert torch.equal(run(1), run(1)) and not torch.equal(run(1), run(2))
    assert not torch.equal(run(1, temperature=0.), run(1, temperature=1.))   # the temperature reaches the draws
    frames, final = trajectory(cd, net, (6, 2, 2), n=2, n_frames=3, steps=6, generator=torch.Generator().manual_seed(1))
    assert [f['t'] for f in frames][-1] == 0 and frames[0]['logits'].shape == (2, 6, K, 2, 2)
    assert torch.equal(final, run(1))
    with pytest.raises(ValueError, match='temperature'): run(1, temperature=-1.)
    with pytest.raises(ValueError, match='Cbar\\*K'):
        cd.sample(Unet(tiny(channels=6, self_condition=True, dim_mults=(1, 2))), 1, (6, 2, 2), steps=2)


def test_logits_view_layout():
    out = torch.arange(2*6*K*3).float().view(1, 6*K, 2, 3)
    lv = logits_view(out)
    assert lv.shape == (1, 6, K, 2, 3) and torch.equal(lv[0, 4, 9], out[0, 4*K + 9])
    with pytest.raises(ValueError, match='Cbar'): logits_view(torch.zeros(1, 7, 2, 2))


def test_settings_and_config_round_trip(random_codec, tmp_path):
    cd = CategoricalDiffusion(T=30, tau=0.5, weighting='const', codec=random_codec)
    net = Unet(tiny(channels=6, out_channels=6*K, self_condition=True, dim_mults=(1, 2)))
    c = json.loads(json.dumps(model_config(cd, net.cfg, (6, 2, 2), codec=random_codec)))
    assert c['kind'] == 'categorical' and c['method']['tau'] == 0.5 and c['network']['out_channels'] == 6*K
    m2, cd2 = from_config(c)
    assert cd2.settings() == cd.settings() and m2.cfg == net.cfg
    m2.load_state_dict(net.state_dict())
    ims = generate(m2, cd2, c, 3, steps=4, generator=torch.Generator().manual_seed(0), codec=random_codec, batch_size=2)
    assert ims.shape == (3, 3, 16, 16) and 0 <= ims.min() and ims.max() <= 1
    # through the checkpoint registry: save, load, sample with a temperature
    ck = tmp_path/"checkpoints"
    save_config(ck, c, codec=random_codec)
    (ck/"step_0000001").mkdir()
    save_file(net.state_dict(), ck/"step_0000001"/"model.safetensors")
    m3, cd3, c3 = load_model(ck/"step_0000001", ema=False)
    assert isinstance(cd3, CategoricalDiffusion) and cd3.settings() == cd.settings()
    files = sample_checkpoint(ck/"step_0000001", tmp_path/"s", n=2, steps=3, temperature=0., device='cpu', ema=False)
    assert len(files) == 2
    with pytest.raises(ValueError, match="kind must be 'categorical'"): from_config({**c, 'kind': 'continuous'})
    with pytest.raises(ValueError, match='logit head'): from_config({**c, 'network': {**c['network'], 'out_channels': None}})
    with pytest.raises(ValueError, match="objective must be 'x0'"): CategoricalDiffusion(objective='eps')
    with pytest.raises(ValueError, match='tau'): CategoricalDiffusion(tau=0.)
    with pytest.raises(ValueError, match='no codec'): generate(m2, CategoricalDiffusion(T=30, tau=0.5, weighting='const'), {**c, 'codec': None}, 1, steps=2)


def test_sampler_feeds_back_the_soft_estimate(random_codec):
    "Self-conditioning input: zeros at the first step, then E[z0] under softmax(logits), not the drawn indices."
    logits = torch.randn(2, 6*K, 2, 2, generator=torch.Generator().manual_seed(0))*2
    seen = []
    class Spy(FixedLogits):
        def forward(self, x, t, x_self_cond=None):
            seen.append(x_self_cond.clone()); return super().forward(x, t)
    cd = CategoricalDiffusion(T=30, codec=random_codec)
    steps = []
    cd.sample(Spy(logits), 2, (6, 2, 2), steps=3, generator=torch.Generator().manual_seed(0), callback=steps.append)
    soft = expected_unit(logits_view(logits).softmax(2))
    assert len(seen) == 3 and torch.equal(seen[0], torch.zeros_like(soft))
    torch.testing.assert_close(seen[1], soft); torch.testing.assert_close(seen[2], soft)
    assert not torch.allclose(steps[0]['x0_hat'], soft)          # the update uses the draw, not the soft estimate
    assert torch.equal(steps[0]['x0_hat'], codes_to_unit(steps[0]['codes'])) and steps[0]['logits'].shape == (2, 6, K, 2, 2)


def test_head_runs_in_float32_under_bf16_autocast(random_codec, codes):
    "The soft decoding and the soft index must not be rounded to bf16: a perfect network still scores zero."
    cd = CategoricalDiffusion(T=100, codec=random_codec)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        r = cd.loss(PerfectLogits(codes), codes_to_unit(codes), t=torch.tensor([0, 1, 99]))
        y = torch.rand(3, 6, K, 4, 4).softmax(2)
        assert expected_unit(y).dtype == torch.float32 and cd.decode_image(y).dtype == torch.float32
    for k in ('img', 'eps_mse'): assert r[k].item() < 1e-6, (k, r[k].item())

def test_loss_terms_recorded_exactly_without_per_step_sync():
    "Terms queued on the device and moved every `every` steps are still every step's exact value, in order."
    from types import SimpleNamespace
    cb = LossTermsCB(every=3); cb.learn = SimpleNamespace(out={})
    want = {'loss': [], 'img': []}
    for i in range(7):
        cb.learn.out = {'loss': torch.tensor(float(i)), 'img': torch.tensor([0.5 * i]), 'x0_hat': torch.zeros(2, 2)}
        want['loss'].append(float(i)); want['img'].append(0.5 * i)
        cb.after_loss()
    assert len(cb._queue) == 1            # 6 of 7 already moved in two transfers, one still on the device
    assert cb.terms == want and cb._queue == []
    cb2 = LossTermsCB(); cb2.load_state_dict(cb.state_dict()); assert cb2.terms == want
