"""Statistical checks of the DDPM and DDIM updates: sampling with the exact denoiser of a known distribution must
reproduce that distribution. Unlike the oracle tests (whose `denoise` ignores `x`), these fail when the update
maths is wrong.

Two references, both independent of `ddpm_step` / `ddim_step`:

- a Gaussian N(mu, s^2 I): with its exact denoiser every sampler step is linear in `x`, so the mean and std of
  the *discretised* sampler's output follow from a scalar recursion (`gaussian_theory`). This is exact at any
  respacing, including the few-step ones whose output std is 15-25% below s (discretisation, not a bug).
- a 3-component Gaussian mixture: with many steps (DDPM all 1000, DDIM 250) the samplers reproduce its weights,
  means and stds; with 40-100 kept steps only the weights are checked (the means and stds of a mixture sampled in few steps
  are biased by more than the sampling error, e.g. component means pulled together by ~0.02 with 'ddim50').

Tolerances are `Z` standard errors of the estimate from the sample size; all draws are seeded.
"""
import math
import pytest, torch
from mbldm.diffusion import make_schedule, gmm_denoiser, sample_ddim, sample_ddpm, space_timesteps

Z = 4.5  # standard errors allowed (many checks, fixed seeds)
LIN = make_schedule('linear')

def gaussian_theory(sched, spec, s:float, kind:str, eta:float=0.) -> float:
    "Output std of a sampler for data N(mu, s^2) started from N(0, 1), by the linear recursion of its steps (float64)."
    ts = (torch.arange(sched.T) if spec is None else space_timesteps(sched.T, spec)).flip(0).tolist()
    var = 1.0  # variance of x_t around its mean sqrt(abar_t) mu (the start noise is N(0, 1))
    for i, t in enumerate(ts):
        a = sched.abar[t].item()
        g = math.sqrt(a) * s * s / (a * s * s + 1 - a)  # x0_hat = mu + g (x - sqrt(a) mu): the exact posterior mean
        if i == len(ts) - 1: return g * math.sqrt(var)
        ap = sched.abar[ts[i + 1]].item()
        if kind == 'ddpm':  # posterior q(x_prev | x, x0_hat) between kept steps: mean c1 x0_hat + c2 x, variance v
            beta = 1 - a / ap
            k, v = (beta * math.sqrt(ap) * g + (1 - ap) * math.sqrt(1 - beta)) / (1 - a), beta * (1 - ap) / (1 - a)
        else:  # DDIM: x_prev = sqrt(ap) x0_hat + sqrt(1 - ap - sigma^2) eps_hat + sigma z
            v = eta**2 * (1 - ap) / (1 - a) * (1 - a / ap)
            k = math.sqrt(ap) * g + math.sqrt(max(1 - ap - v, 0.)) * (1 - math.sqrt(a) * g) / math.sqrt(1 - a)
        var = k * k * var + v

def sample(kind, eta, spec, means, s, n, seed, sched=LIN):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, means.shape[1], generator=g, dtype=torch.float64)
    den = gmm_denoiser(sched, means, s)
    if kind == 'ddpm': return sample_ddpm(den, x, sched, spec, clip=None, generator=g)
    return sample_ddim(den, x, sched, spec, eta=eta, clip=None, generator=g)

def assert_moments(x, mu, sd, what):
    "Mean and per-dimension std of `x` (n, D) against `mu`, `sd` within Z standard errors."
    n = len(x)
    m_err = ((x.mean(0) - mu) / (sd / math.sqrt(n))).abs().max().item()
    s_err = ((x.std(0) / sd - 1) * math.sqrt(2 * (n - 1))).abs().max().item()
    assert m_err < Z and s_err < Z, f"{what}: mean off by {m_err:.1f} se, std off by {s_err:.1f} se (mean {x.mean(0).tolist()}, std {x.std(0).tolist()}, want {mu.tolist()}, {sd:.4f})"

FEW = [('ddpm', 0., 'ddim50'), ('ddim', 0., 'ddim50'), ('ddim', 0., '100'), ('ddim', 0., 'linspace40'),
       ('ddim', 1., 'ddim50'), ('ddim', 1., 'linspace40'), ('ddim', 1., '25,15')]

@pytest.mark.parametrize('kind,eta,spec', [('ddpm', 0., None)] + FEW)
def test_gaussian_matches_the_discretised_sampler(kind, eta, spec):
    "2-D Gaussian N((0.3, -0.2), 0.15^2 I): mean and std of 4000 samples against the exact recursion."
    mu, s = torch.tensor([[0.3, -0.2]], dtype=torch.float64), 0.15
    x = sample(kind, eta, spec, mu, s, 4000, seed=1)
    assert_moments(x, mu[0], gaussian_theory(LIN, spec, s, kind, eta), f"{kind} eta={eta} {spec}")

MIX = torch.tensor([[-0.6, -0.3], [0.6, -0.3], [0.0, 0.6]], dtype=torch.float64)  # 3 equal-weight components
S = 0.15

def components(x):
    "Samples split by nearest component mean (the components are 6-8 std apart)."
    k = torch.cdist(x, MIX).argmin(1)
    return [x[k == j] for j in range(len(MIX))]

def assert_weights(parts, what):
    n, p = sum(len(c) for c in parts), 1 / len(parts)
    z = max(abs(len(c) / n - p) / math.sqrt(p * (1 - p) / n) for c in parts)
    assert z < Z, f"{what}: component weights {[len(c) / n for c in parts]} off 1/3 by {z:.1f} se"

@pytest.mark.parametrize('kind,eta,spec', [('ddpm', 0., None), ('ddim', 0., '250'), ('ddim', 1., '250')])
def test_mixture_many_steps(kind, eta, spec):
    """DDPM on all 1000 steps, DDIM on 250: weights 1/3, every component's mean and std (with the recursion's
    shrink: 2% for DDPM, 3.5% / 8% for DDIM eta 0 / 1). Measured with 60,000 samples, what the recursion of one
    Gaussian misses here (the components' pull on each other) is at most 1.3 standard errors of this test."""
    parts = components(sample(kind, eta, spec, MIX, S, 3000, seed=2))
    assert_weights(parts, f"{kind} eta={eta} {spec}")
    sd = gaussian_theory(LIN, spec, S, kind, eta)
    for c, mu in zip(parts, MIX): assert_moments(c, mu, sd, f"{kind} eta={eta} {spec} component {mu.tolist()}")

@pytest.mark.parametrize('kind,eta,spec', FEW)
def test_mixture_weights_few_steps(kind, eta, spec):
    "40-100 kept steps: samples still split 1/3 each between the components, and land on them."
    x = sample(kind, eta, spec, MIX, S, 3000, seed=3)
    assert_weights(components(x), f"{kind} eta={eta} {spec}")
    assert torch.cdist(x, MIX).min(1).values.max() < 8 * S  # nothing stranded between components

def test_theory_is_not_trivial():
    "The references differ where the samplers differ: dropping DDPM's noise or DDIM's eta changes the predicted std."
    a, b = gaussian_theory(LIN, 'ddim50', S, 'ddim', 0.), gaussian_theory(LIN, 'ddim50', S, 'ddim', 1.)
    assert 0.75 * S < b < a < S, (a, b)
    assert gaussian_theory(LIN, None, S, 'ddpm') > 0.97 * S
