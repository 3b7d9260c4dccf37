"""Acceptance facts of the diffusion core (ALGORITHMS.md 1.6, 3.6, 4.5) that need no trained network."""
import math
import numpy as np
import pytest
import torch
from mbldm.diffusion import *
from mbldm.diffusion import _at

LIN, COS, SIG = make_schedule('linear'), make_schedule('cosine'), make_schedule('sigmoid')
CDC = make_schedule('cosine', 8193)

def _close(a, b, atol=None, rtol=None):
    "torch.testing.assert_close's defaults without its slow first call (~3 s of lazy imports)."
    f64 = torch.float64 in (a.dtype, getattr(b, 'dtype', None))
    atol = (1e-7 if f64 else 1e-5) if atol is None else atol
    rtol = (1e-7 if f64 else 1.3e-6) if rtol is None else rtol
    b = torch.as_tensor(b).to(a)
    assert a.shape == b.shape, f"shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}"
    err = (a - b).abs() - (atol + rtol*b.abs())
    assert (err <= 0).all(), f"not close: max |a-b| = {(a - b).abs().max().item():.3g}"

def _gen(seed=0): return torch.Generator().manual_seed(seed)

def _x0(shape=(2, 3, 8, 8), seed=0, lim=0.95):
    return (torch.rand(shape, generator=_gen(seed))*2 - 1)*lim

class Counter:
    "A denoise function that records its calls and returns a fixed x0 (or a function of x)."
    def __init__(self, f): self.f, self.calls = f, []
    def __call__(self, x, t, x0_prev):
        self.calls.append((int(t[0]), None if x0_prev is None else x0_prev.clone()))
        return self.f(x)

# ---- schedules (1.1) --------------------------------------------------------------------------------

@pytest.mark.parametrize("sched,t,ref", [
    (LIN, 0, 0.9999), (LIN, 190, 0.68315), (LIN, 199, 0.65904), (LIN, 999, 4.036e-5),
    (COS, 499, 0.49384), (CDC, 0, 0.9999952), (SIG, 0, 0.99970), (SIG, 499, 0.5000)])
def test_schedule_reference_values(sched, t, ref):
    assert abs(sched.abar[t].item() - ref) <= 1e-4*ref

def test_schedule_reference_values_tails():
    assert abs(make_schedule('linear', 20000).abar[0].item() - 0.999995) < 1e-9
    assert abs(make_schedule('linear', 20000).abar[-1].item()/4.30e-5 - 1) < 1e-3
    assert abs(CDC.abar[-1].item()/3.6e-11 - 1) < 0.01
    assert abs(SIG.abar[-1].item()/3.0e-7 - 1) < 0.01
    assert int((CDC.snr < 5).nonzero()[0]) == 2146

def test_schedule_buffers_consistent():
    s = LIN
    assert s.betas.dtype == torch.float64 and len(s) == 1000
    _close(s.abar_prev[1:], s.abar[:-1]); assert s.abar_prev[0] == 1
    _close(s.post_c1, s.betas*s.abar_prev.sqrt()/(1 - s.abar))
    assert s.post_var[0] == 0 and s.post_logvar[0] == math.log(1e-20)
    assert torch.isfinite(s.post_logvar).all()

def test_schedule_bad_input():
    with pytest.raises(ValueError, match='unknown schedule'): make_schedule('quad')
    with pytest.raises(ValueError, match=r'\(0, 1\)'): make_schedule('linear', 10)
    with pytest.raises(ValueError, match='non-empty'): Schedule([])
    with pytest.raises(ValueError, match='positive'): make_schedule('cosine', 0)

# ---- conversions (1.2) ------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-10)])
@pytest.mark.parametrize("sched", [LIN, COS, SIG])
def test_round_trips(sched, dtype, tol):
    g = _gen(1)
    x0 = torch.rand(16, 3, 4, 4, generator=g, dtype=dtype)*2 - 1
    eps = torch.randn(16, 3, 4, 4, generator=g, dtype=dtype)
    t = torch.randint(0, 1000, (16,), generator=g)
    xt, v = q_sample(sched, x0, t, eps), v_from(sched, x0, t, eps)
    # reading x0 back from x_t amplifies x_t's rounding by 1/sqrt(abar), reading eps back by 1/sqrt(1-abar)
    assert ((x0_from_eps(sched, xt, t, eps) - x0).abs() <= tol*_at(sched.sqrt_recip_abar, t, x0)).all()
    assert ((eps_from_x0(sched, xt, t, x0) - eps).abs() <= tol/_at(sched.sqrt_1m_abar, t, x0)).all()
    _close(x0_from_v(sched, xt, t, v), x0, atol=tol, rtol=0)
    _close(eps_from_v(sched, xt, t, v), eps, atol=tol, rtol=0)
    for obj, out in [('eps', eps), ('x0', x0), ('v', v)]:
        assert ((to_x0(sched, out, xt, t, obj) - x0).abs() <= tol*_at(sched.sqrt_recip_abar, t, x0)).all()

def test_round_trip_plain_tolerance_mid_range():
    x0, eps = _x0((8, 3, 4, 4)), torch.randn(8, 3, 4, 4, generator=_gen(2))
    t = torch.arange(100, 900, 100)
    _close(x0_from_eps(LIN, q_sample(LIN, x0, t, eps), t, eps), x0, atol=1e-5, rtol=0)

def test_forward_shapes_and_bad_t():
    x = torch.zeros(2, 3, 4, 4)
    assert q_sample(LIN, x, 5, x).shape == x.shape
    assert _at(LIN.abar, torch.tensor([1, 2]), x).shape == (2, 1, 1, 1)
    with pytest.raises(ValueError, match='timesteps must lie'): q_sample(LIN, x, -1, x)
    with pytest.raises(ValueError, match='scalar or a'): q_sample(LIN, x, torch.zeros(2, 2).long(), x)
    with pytest.raises(ValueError, match='unknown objective'): to_x0(LIN, x, x, 3, 'score')

# ---- loss weights (1.3) -----------------------------------------------------------------------------

@pytest.mark.parametrize("sched", [LIN, COS, SIG, CDC])
def test_min_snr_weights(sched):
    t = torch.arange(sched.T)
    snr = sched.snr.float()
    w = loss_weight(sched, t, 'eps')
    assert (w[snr <= 5] == 1).all()
    _close(w[snr > 5], 5/snr[snr > 5])
    wx = loss_weight(sched, t, 'x0')
    assert wx.max() <= 5 and torch.equal(wx[snr < 5], snr[snr < 5])
    _close(loss_weight(sched, t, 'v'), (sched.snr.clamp(max=5)/(sched.snr + 1)).float())

def test_other_weights_and_reduction():
    t = torch.arange(1000)
    _close(loss_weight(LIN, t, 'x0', 'max_snr', snr_gamma=1.), LIN.snr.clamp(min=1).float())
    _close(loss_weight(LIN, t, 'eps', 'max_snr', snr_gamma=1.),
                               (LIN.snr.clamp(min=1)/LIN.snr).float())
    # CDC's "truncated SNR" for an x0 network is min(SNR, 5): the 'min_snr' weighting, never above 5
    _close(loss_weight(LIN, t, 'x0', 'min_snr', snr_gamma=5.), LIN.snr.clamp(max=5).float())
    with pytest.raises(ValueError, match="ambiguous"): loss_weight(LIN, t, 'x0', 'trunc_snr')
    assert (loss_weight(LIN, t, 'v', 'const') == 1).all()
    with pytest.raises(ValueError, match='weighting'): loss_weight(LIN, t, 'eps', 'p2')
    with pytest.raises(ValueError, match='objective'): loss_weight(LIN, t, 'noise')
    pred, target = torch.zeros(2, 3, 2, 2), torch.ones(2, 3, 2, 2)
    target[1] *= 2
    w = torch.tensor([1., 4.])
    assert weighted_loss(pred, target).item() == pytest.approx(2.5)           # (1 + 4)/2
    assert weighted_loss(pred, target, w).item() == pytest.approx(8.5)        # (1*1 + 4*4)/2
    assert weighted_loss(pred, target, w, p=1).item() == pytest.approx(2.5)   # (1*1 + 2*2)/2

# ---- respacing (1.4) --------------------------------------------------------------------------------

def _guided_space(T, section_counts):
    "Reference: guided-diffusion's space_timesteps, written from its documented semantics."
    if isinstance(section_counts, str) and section_counts.startswith("ddim"):
        n = int(section_counts[4:])
        for i in range(1, T):
            if len(range(0, T, i)) == n: return set(range(0, T, i))
        raise ValueError
    counts = [int(x) for x in str(section_counts).split(",")]
    size_per, extra, start, out = T//len(counts), T % len(counts), 0, []
    for i, c in enumerate(counts):
        size = size_per + (1 if i < extra else 0)
        stride = 1 if c <= 1 else (size - 1)/(c - 1)
        cur = 0.0
        for _ in range(c): out.append(start + round(cur)); cur += stride
        start += size
    return set(out)

@pytest.mark.parametrize("T,spec", [(1000, 'ddim100'), (1000, 'ddim50'), (1000, 'ddim25'), (1000, 'ddim1000'),
                                    (1000, '50'), (1000, '250'), (1000, '10,15,20'), (4000, '7,3'), (999, '1,1,1')])
def test_space_timesteps_matches_guided_diffusion(T, spec):
    assert set(space_timesteps(T, spec).tolist()) == _guided_space(T, spec)

def test_space_timesteps_cdc_and_ddim100():
    assert space_timesteps(1000, 'ddim100').tolist() == list(range(0, 1000, 10))
    for S in (2, 3, 5, 9, 17, 33, 65, 129):
        idx = space_timesteps(8193, f'linspace{S}')
        assert idx.tolist() == np.floor(np.linspace(0, 8192, S)).astype(int).tolist()
        assert idx[0] == 0 and idx[-1] == 8192
    assert space_timesteps(8193, 'linspace65').diff().unique().tolist() == [128]
    assert space_timesteps(8193, 'linspace1').tolist() == [8192]
    assert space_timesteps(1000, 20).tolist() == space_timesteps(1000, '20').tolist()

@pytest.mark.parametrize("spec", ['ddim0', 'ddim999x', 'linspace0', 'linspace2000', '1001', 'x', '', 'ddim3,4'])
def test_space_timesteps_bad(spec):
    with pytest.raises(ValueError): space_timesteps(1000, spec)

@pytest.mark.parametrize("sched,spec", [(LIN, 'ddim100'), (LIN, '50'), (CDC, 'linspace65'), (SIG, '10,15,20')])
def test_respaced_alphas_cumprod(sched, spec):
    ts = space_timesteps(sched.T, spec)
    r = respace(sched, ts)
    _close(torch.cumprod(r.alphas, 0), sched.abar[ts], rtol=1e-9, atol=0)
    assert torch.equal(r.timestep_map, ts)

# ---- DDIM (1.4, 1.6, 3.6) ---------------------------------------------------------------------------

SPACINGS = [(LIN, 'ddim100'), (LIN, '50'), (LIN, None), (SIG, 'ddim25'),
            (CDC, 'linspace65'), (CDC, 'linspace17'), (CDC, 'linspace1')]

@pytest.mark.parametrize("sched,spec", SPACINGS)
@pytest.mark.parametrize("gamma", [1.0, 0.8, 0.6, 0.0])
def test_oracle_ddim_returns_x0(sched, spec, gamma):
    x0 = _x0()
    x = start_noise(x0.shape, gamma, _gen(3))
    _close(sample_ddim(oracle(x0), x, sched, spec), x0, atol=1e-5, rtol=0)

def test_oracle_ddim_unsorted_list_and_custom_steps():
    x0 = _x0()
    ts = torch.tensor([0, 500, 3, 999, 77])
    _close(sample_ddim(oracle(x0), torch.randn(x0.shape), LIN, ts), x0, atol=1e-5, rtol=0)
    _close(sample_ddim(oracle(x0), torch.randn(x0.shape), LIN, [640]), x0, atol=1e-5, rtol=0)

def test_cdc_single_step_calls_T_minus_1():
    x0, den = _x0(), Counter(lambda x: torch.full_like(x, 3.))
    out = sample_ddim(den, torch.zeros_like(x0), CDC, 'linspace1')
    assert [c[0] for c in den.calls] == [8192] and (out == 1).all()   # one call at T-1, clamped prediction

def test_gamma_zero_is_deterministic():
    den = lambda x, t, _: torch.tanh(x + 0.01*t[:, None, None, None].float()/8193)
    a = sample_ddim(den, start_noise((1, 3, 4, 4), 0.), CDC, 'linspace17')
    b = sample_ddim(den, start_noise((1, 3, 4, 4), 0.), CDC, 'linspace17')
    assert torch.equal(a, b)

@pytest.mark.parametrize("sched,spec", [(LIN, 'ddim100'), (CDC, 'linspace65'), (SIG, None)])
def test_ddim_walks_forward_process_backwards(sched, spec):
    x0, eps = _x0(), torch.randn(2, 3, 8, 8, generator=_gen(4))
    ts = space_timesteps(sched.T, spec) if spec else torch.arange(sched.T)
    seen = []
    sample_ddim(oracle(x0), q_sample(sched, x0, int(ts.max()), eps), sched, spec, callback=seen.append)
    assert len(seen) == len(ts)
    for s in seen: _close(s['x'], q_sample(sched, x0, s['t'], eps), atol=1e-4, rtol=0)

def test_eta1_all_steps_gives_posterior_variance():
    s = LIN
    sig2 = torch.tensor([ddim_sigma(s.abar[t].item(), s.abar_prev[t].item(), 1.)**2 for t in range(s.T)],
                        dtype=torch.float64)
    _close(sig2, s.post_var, rtol=1e-9, atol=1e-15)
    assert ddim_sigma(0.5, 0.9, 0.) == 0

def test_ddpm_step_matches_posterior_buffers():
    x, x0 = torch.randn(2, 3, 4, 4, dtype=torch.float64), _x0((2, 3, 4, 4)).double()
    for t in (1, 10, 500, 999):
        got = ddpm_step(x, x0, LIN.abar[t].item(), LIN.abar_prev[t].item())
        _close(got, LIN.post_c1[t]*x0 + LIN.post_c2[t]*x)

def test_callback_sees_every_step():
    x0, seen = _x0(), []
    sample_ddim(oracle(x0), torch.randn(x0.shape), LIN, 'ddim100', callback=seen.append)
    assert [s['i'] for s in seen] == list(range(100))
    assert [s['t'] for s in seen] == list(range(990, -1, -10))
    assert set(seen[0]) == {'i', 't', 'x', 'x0_hat', 'x0_self_cond'}
    seen.clear()
    sample_ddpm(oracle(x0), torch.randn(x0.shape), LIN, callback=seen.append)
    assert [s['t'] for s in seen] == list(range(999, -1, -1))

# ---- DIRAC: early stop, late start, thresholds (4.5) ------------------------------------------------

def test_late_start_std():
    t0, std = late_start(LIN, space_timesteps(1000, 'ddim100'), 80)
    assert t0 == 190 and abs(std - 0.5629) < 5e-5 and abs(std - math.sqrt(1 - LIN.abar[190].item())) < 1e-12
    assert late_start(LIN, range(1000), 0)[0] == 999
    assert late_start(LIN, [190], 0, var0=1.)[1] == pytest.approx(1.0)
    with pytest.raises(ValueError, match='skip'): late_start(LIN, space_timesteps(1000, 'ddim100'), 100)

def test_dirac_n_with_late_start_makes_20_calls():
    ts = space_timesteps(1000, 'ddim100')
    t0, std = late_start(LIN, ts, 80)
    den = Counter(lambda x: 0.1*x)
    seen = []
    out = sample_ddim(den, start_noise((2, 3, 8, 8), std, _gen(5)), LIN, ts, t_start=t0, stop_after=100,
                      clip=(-0.05, 0.05), callback=seen.append)
    assert len(den.calls) == 20 and den.calls[0][0] == 190 and den.calls[-1][0] == 0
    assert [s['i'] for s in seen] == list(range(80, 100))
    assert torch.equal(out, seen[-1]['x0_hat']) and out.abs().max() <= 0.05

@pytest.mark.parametrize("n", [1, 2, 37, 81, 99, 100])
def test_dirac_n_returns_clipped_estimate_at_step_n(n):
    den, seen = Counter(lambda x: 2*torch.tanh(x)), []
    x = torch.randn(2, 3, 8, 8, generator=_gen(6))
    out = sample_ddim(den, x, LIN, 'ddim100', stop_after=n, clip=(-0.5, 0.7), callback=seen.append)
    assert len(den.calls) == n and seen[-1]['i'] == n - 1
    assert torch.equal(out, (2*torch.tanh(seen[-1]['x'])).clamp(-0.5, 0.7))
    full = sample_ddim(den, x, LIN, 'ddim100', clip=(-0.5, 0.7))
    if n == 100: assert torch.equal(out, full)   # DIRAC-100 is plain 100-step DDIM

def test_dirac_oracle_any_n_and_late_start():
    r0 = _x0(lim=0.3)
    ts = space_timesteps(1000, 'ddim100')
    for skip in (0, 50, 80, 99):
        t0, std = late_start(LIN, ts, skip)
        x = start_noise(r0.shape, std, _gen(skip))
        for n in (skip + 1, 100):
            out = sample_ddim(oracle(r0), x, LIN, ts, t_start=t0, stop_after=n, clip=(-0.3, 0.3))
            _close(out, r0, atol=1e-6, rtol=0)

def test_zero_predictor_returns_zeros():
    x = torch.randn(2, 3, 8, 8)
    zero = lambda x, t, _: torch.zeros_like(x)
    for kw in [dict(), dict(t_start=190), dict(stop_after=1), dict(clip=(-0.1, 0.2)), dict(clip=None)]:
        assert torch.equal(sample_ddim(zero, x, LIN, 'ddim100', **kw), torch.zeros_like(x))
    assert torch.equal(sample_ddpm(zero, x, LIN, 'ddim100', generator=_gen()), torch.zeros_like(x))

def test_rate_dependent_tensor_clip():
    lo, hi = torch.tensor([-0.1, -0.5]).view(2, 1, 1, 1), torch.tensor([0.1, 0.5]).view(2, 1, 1, 1)
    out = sample_ddim(lambda x, t, _: torch.full_like(x, 9.), torch.randn(2, 3, 4, 4), LIN, 'ddim10', clip=(lo, hi))
    assert (out[0] == 0.1).all() and (out[1] == 0.5).all()

# ---- DDPM -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("sched,spec", [(LIN, None), (SIG, 'ddim100'), (CDC, 'linspace65')])
def test_oracle_ddpm_ends_at_x0(sched, spec):
    x0 = _x0()
    _close(sample_ddpm(oracle(x0), torch.randn(x0.shape), sched, spec, generator=_gen(7)),
                               x0, atol=1e-5, rtol=0)

def test_ddpm_equals_ddim_eta1():
    den = lambda x, t, _: torch.tanh(0.7*x)
    xT = torch.randn(2, 3, 4, 4, generator=_gen(8))
    for spec in (None, 'ddim50'):
        a = sample_ddpm(den, xT, SIG, spec, generator=_gen(9))
        b = sample_ddim(den, xT, SIG, spec, eta=1., generator=_gen(9))
        _close(a, b, atol=1e-5, rtol=1e-5)

def test_ddim_eta_is_stochastic_and_eta0_ignores_generator():
    den = lambda x, t, _: torch.tanh(0.7*x)
    xT = torch.randn(1, 1, 4, 4)
    assert torch.equal(sample_ddim(den, xT, LIN, 'ddim20', generator=_gen(1)),
                       sample_ddim(den, xT, LIN, 'ddim20', generator=_gen(2)))
    assert not torch.equal(sample_ddim(den, xT, LIN, 'ddim20', eta=0.5, generator=_gen(1)),
                           sample_ddim(den, xT, LIN, 'ddim20', eta=0.5, generator=_gen(2)))

# ---- predictors, self-conditioning, non-network predictors ------------------------------------------

def test_sampler_passes_previous_clipped_estimate():
    den = Counter(lambda x: 5*x)
    sample_ddim(den, torch.randn(1, 2, 3, 3), LIN, 'ddim5', clip=(-0.5, 0.5))
    assert den.calls[0][1] is None
    assert all(c[1] is not None and c[1].abs().max() <= 0.5 for c in den.calls[1:])

def test_predictor_self_cond_and_conditioning():
    seen = {}
    def model(x, t_in, x_self_cond=None, cond=None):
        seen.update(t_in=t_in, sc=x_self_cond, cond=cond)
        return {'x0': torch.zeros_like(x) + cond}
    T = CDC.T
    pred = Predictor(model, CDC, 'x0', self_cond=True, time_fn=lambda t: t.float()/T, out_key='x0', cond=0.25)
    out = sample_ddim(pred, torch.randn(1, 2, 3, 3), CDC, 'linspace5')
    assert (out == 0.25).all() and (seen['sc'] == 0.25).all() and seen['cond'] == 0.25
    assert seen['t_in'].dtype == torch.float32 and seen['t_in'].item() == 0.
    first = {}
    Predictor(lambda x, t, x_self_cond=None: first.setdefault('sc', x_self_cond) * 0 + x, LIN, 'x0',
              self_cond=True)(torch.ones(1, 2, 2, 2), torch.tensor([3]))
    assert torch.equal(first['sc'], torch.zeros(1, 2, 2, 2))
    with pytest.raises(ValueError, match='objective'): Predictor(model, LIN, 'score')

def test_predictor_eps_objective_matches_conversion():
    x0, eps, t = _x0((3, 2, 4, 4)), torch.randn(3, 2, 4, 4), torch.tensor([5, 500, 900])
    xt = q_sample(LIN, x0, t, eps)
    pred = Predictor(lambda x, t_in: eps, LIN, 'eps')
    assert ((pred(xt, t) - x0).abs() <= 1e-5*_at(LIN.sqrt_recip_abar, t, x0)).all()

def test_self_cond_input_and_cat():
    net = torch.nn.Conv2d(4, 2, 1)
    pred = Predictor(lambda x, t, x_self_cond=None: net(self_cond_cat(x, x_self_cond)), LIN, 'x0', self_cond=True)
    x, t = torch.randn(2, 2, 3, 3), torch.tensor([1, 2])
    assert self_cond_cat(x).shape == (2, 4, 3, 3) and torch.equal(self_cond_cat(x)[:, :2], torch.zeros_like(x))
    assert torch.equal(self_cond_input(pred, x, t, p=0.), torch.zeros_like(x))
    sc = self_cond_input(pred, x, t, p=1.)
    assert not sc.requires_grad and torch.allclose(sc, pred(x, t))
    hits = sum(bool(self_cond_input(pred, x, t, p=0.5, generator=g).abs().sum() > 0)
               for g in [_gen(i) for i in range(200)])
    assert 70 < hits < 130

def test_categorical_style_sampling_predictor():
    "A predictor that samples indices (no network, its own RNG) and returns normalised values."
    K, g = 16, _gen(10)
    def den(x, t, x0_prev):
        logits = -(x[..., None] - (2*torch.arange(K)/(K - 1) - 1))**2*50
        k = torch.distributions.Categorical(logits=logits).sample()
        return 2*k.float()/(K - 1) - 1
    torch.manual_seed(0)
    out = sample_ddim(den, torch.randn(2, 6, 4, 4, generator=g), LIN, 'ddim20')
    k = (out + 1)/2*(K - 1)
    assert out.shape == (2, 6, 4, 4) and torch.allclose(k, k.round(), atol=1e-4)

def test_float64_and_dtype_preserved():
    x0 = _x0().double()
    out = sample_ddim(oracle(x0), torch.randn(x0.shape, dtype=torch.float64), LIN, 'ddim100')
    assert out.dtype == torch.float64
    _close(out, x0, atol=1e-12, rtol=0)

def test_gmm_denoiser_samples_the_modes():
    means = torch.tensor([[0.5, 0.5], [-0.5, -0.5]])
    out = sample_ddim(gmm_denoiser(SIG, means, 0.02), torch.randn(200, 2, generator=_gen(11)), SIG, 'ddim50')
    d = torch.cdist(out, means)
    assert d.min(1).values.max() < 0.15 and d.argmin(1).bincount(minlength=2).min() > 50

# ---- bad input --------------------------------------------------------------------------------------

def test_sampler_bad_input():
    x, den = torch.randn(1, 1, 2, 2), lambda x, t, _: x
    with pytest.raises(ValueError, match='distinct'): sample_ddim(den, x, LIN, [5, 5])
    with pytest.raises(ValueError, match='distinct'): sample_ddim(den, x, LIN, [])
    with pytest.raises(ValueError, match='lie in'): sample_ddim(den, x, LIN, [1000])
    with pytest.raises(ValueError, match='nothing to run'): sample_ddim(den, x, LIN, 'ddim100', t_start=190, stop_after=80)
    with pytest.raises(ValueError, match='nothing to run'): sample_ddim(den, x, LIN, 'ddim100', stop_after=101)
    with pytest.raises(ValueError, match='nothing to run'): sample_ddim(den, x, LIN, 'ddim100', t_start=-1)
    with pytest.raises(ValueError, match='eta'): sample_ddim(den, x, LIN, eta=-1)
    with pytest.raises(ValueError, match='lo <= hi'): sample_ddim(den, x, LIN, 'ddim10', clip=(1., -1.))

def test_eps_rederived_from_clipped_x0():
    x, seen = torch.randn(1, 1, 4, 4, generator=_gen(12)), []
    sample_ddim(lambda x, t, _: torch.full_like(x, 3.), x, LIN, [500, 100], clip=(-1, 1), callback=seen.append)
    a, ap = LIN.abar[500].item(), LIN.abar[100].item()
    eps = (x - math.sqrt(a)*1.)/math.sqrt(1 - a)             # from the clipped x0 = 1, not the raw 3
    _close(seen[1]['x'], math.sqrt(ap)*1. + math.sqrt(1 - ap)*eps)


# --- the `denoise` contract: a tensor or a dict {'x0', 'x0_self_cond', extras} -----------------------------------
SAMPLER_RUNS = {
    'ddpm': lambda d, x, g, **kw: sample_ddpm(d, x, LIN, 'ddim25', generator=g, **kw),
    'ddim-eta0': lambda d, x, g, **kw: sample_ddim(d, x, LIN, 'ddim25', generator=g, **kw),
    'ddim-eta1': lambda d, x, g, **kw: sample_ddim(d, x, LIN, 'ddim25', eta=1., generator=g, **kw),
}

def _net_like(x, t, x0_prev):
    "A deterministic stand-in for a network that uses its self-conditioning input."
    base = torch.tanh(0.5*x + 1e-3*t.float().view(-1, *[1]*(x.ndim-1)))
    return base if x0_prev is None else (0.7*base + 0.3*x0_prev)

@pytest.mark.parametrize("name", list(SAMPLER_RUNS))
def test_denoise_tensor_and_dict_forms_agree(name):
    run, x = SAMPLER_RUNS[name], torch.randn(3, 2, 4, 4, generator=_gen(7))
    a = run(_net_like, x, _gen(1))
    extras = []
    b = run(lambda x, t, p: {'x0': _net_like(x, t, p), 'logits': torch.ones(1)}, x, _gen(1), callback=extras.append)
    assert torch.equal(a, b)
    assert all('logits' in e for e in extras) and len(extras) == 25

@pytest.mark.parametrize("name", list(SAMPLER_RUNS))
def test_dict_self_cond_is_what_the_network_sees(name):
    run, x, seen, asked = SAMPLER_RUNS[name], torch.randn(2, 1, 4, 4, generator=_gen(8)), [], []
    def spy(x, t, x0_prev):
        seen.append(x0_prev)
        hard, soft = _net_like(x, t, x0_prev).sign(), 0.25*_net_like(x, t, x0_prev)   # step hard, feed back soft
        asked.append(soft)
        return {'x0': hard, 'x0_self_cond': soft}
    out = run(spy, x, _gen(2))
    assert seen[0] is None and all(torch.equal(s, a) for s, a in zip(seen[1:], asked[:-1]))
    assert set(out.unique().tolist()) <= {-1., 0., 1.}                 # the output is the stepped (hard) estimate

def test_dict_without_x0_is_a_clear_error():
    with pytest.raises(ValueError, match="'x0'"): sample_ddim(lambda x, t, p: {'eps': x}, torch.zeros(1, 2), LIN, 'ddim2')
