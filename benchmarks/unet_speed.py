"""Training-step speed of mbldm's seed U-Net vs denoising-diffusion-pytorch's `Unet` at the same widths.

One process, one run, 2 threads. A training step is forward + MSE backward + Adam step on a CPU-sized batch
(default: batch 4 of 64x64x6 maps with self-conditioning input, the seed's latent shape). The models are timed
*interleaved* (A, B, A, B, ...) so that load from other processes on a shared machine hits both alike.

Compared (all at dim=80, dim_mults=(1,2,4,8), 6 channels, self-conditioning):
* `mbldm`: `mbldm.unet.Unet(seed_default())` (GroupNorm, full attention only at the bottleneck, SDPA).
* `lucid_matched`: the library's `Unet(..., flash_attn=True)` with its per-level attention modules replaced
  by identities (what our config removes), so the remaining differences are RMSNorm vs GroupNorm and the 4
  memory key/values of the bottleneck attention.
* `lucid_stock`: the library's `Unet` as shipped (linear attention at levels 0-2, full attention at level 3 and
  the bottleneck, einsum attention).

    python benchmarks/unet_speed.py [--batch 4] [--size 64] [--iters 5] [--warmup 1] [--out results.json]
"""
import argparse, json, statistics, sys, time
from pathlib import Path
import torch, torch.nn as nn, torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a clone without installing

from mbldm.unet import Unet, seed_default, count_params


class ZeroBranch(nn.Module):
    "Stands in for a removed attention branch inside the library's residual `attn(x) + x`."
    def forward(self, x): return torch.zeros((), dtype=x.dtype, device=x.device)


def lucid_unet(matched: bool, cfg):
    from denoising_diffusion_pytorch import Unet as LucidUnet
    m = LucidUnet(dim=cfg.dim, dim_mults=cfg.dim_mults, channels=cfg.channels, self_condition=cfg.self_condition,
                  flash_attn=matched)
    if matched:
        for level in [*m.downs, *m.ups]: level[2] = ZeroBranch()
    return m


def make_step(model, x, t, target):
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    def step():
        opt.zero_grad(set_to_none=True)
        loss = F.mse_loss(model(x, t), target)
        loss.backward()
        opt.step()
    return step


def timeit(fn):
    t0 = time.perf_counter(); fn(); return time.perf_counter() - t0


def quartiles(xs):
    q = statistics.quantiles(xs, n=4) if len(xs) > 1 else [xs[0]]*3
    return dict(median=statistics.median(xs), q1=q[0], q3=q[2], iqr=q[2]-q[0], n=len(xs), all=xs)


def profile(step, n=2, top=12):
    "Top ops by self CPU time over `n` steps."
    from torch.profiler import profile as tprofile, ProfilerActivity
    with tprofile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(n): step()
    ev = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in ev)
    return [dict(op=e.key, self_ms=e.self_cpu_time_total/1e3/n, pct=100*e.self_cpu_time_total/total, calls=e.count//n)
            for e in ev[:top]]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--batch', type=int, default=4)
    ap.add_argument('--size', type=int, default=64)
    ap.add_argument('--iters', type=int, default=5, help='timed steps per model')
    ap.add_argument('--warmup', type=int, default=1)
    ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--dim', type=int, default=None, help='override the seed width (e.g. 16 for a smoke run)')
    ap.add_argument('--no-stock', action='store_true', help='skip the library-as-shipped variant')
    ap.add_argument('--no-profile', action='store_true')
    ap.add_argument('--out', default=None, help='write results JSON here (default: stdout only)')
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    cfg = seed_default() if a.dim is None else seed_default(dim=a.dim)
    x = torch.randn(a.batch, cfg.channels, a.size, a.size)
    t = torch.randint(0, 1000, (a.batch,))
    target = torch.randn_like(x)
    models = {'mbldm': Unet(cfg), 'lucid_matched': lucid_unet(True, cfg)}
    if not a.no_stock: models['lucid_stock'] = lucid_unet(False, cfg)
    steps = {k: make_step(m, x, t, target) for k, m in models.items()}
    for i in range(a.warmup):
        for s in steps.values(): s()
        print(f"warm-up {i+1}/{a.warmup} done", file=sys.stderr, flush=True)
    times = {k: [] for k in steps}
    for i in range(a.iters):
        for k, s in steps.items(): times[k].append(timeit(s))
        print(f"step {i+1}/{a.iters}: " + "  ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items()), file=sys.stderr, flush=True)
    res = dict(torch=torch.__version__, threads=a.threads, batch=a.batch, shape=list(x.shape), iters=a.iters,
               warmup=a.warmup, dim=cfg.dim, dim_mults=list(cfg.dim_mults),
               params={k: sum(p.numel() for p in m.parameters()) for k, m in models.items()},
               seconds={k: quartiles(v) for k, v in times.items()})
    med = {k: v['median'] for k, v in res['seconds'].items()}
    res['ratio_lucid_over_mbldm'] = {k: med[k]/med['mbldm'] for k in med if k != 'mbldm'}
    for k, v in res['seconds'].items():
        print(f"{k:>14}: {res['params'][k]/1e6:6.2f}M params  median {v['median']:.3f} s/step  IQR {v['iqr']:.3f}  "
              f"({a.batch/v['median']:.2f} img/s)")
    for k, r in res['ratio_lucid_over_mbldm'].items(): print(f"time({k}) / time(mbldm) = {r:.3f}  (>1: mbldm faster)")
    if not a.no_profile:
        res['profile'] = {k: profile(steps[k]) for k in ('mbldm', 'lucid_matched')}
        for k, rows in res['profile'].items():
            print(f"\nwhere the time goes ({k}, self CPU time per step):")
            for r in rows: print(f"  {r['op']:<42} {r['self_ms']:9.1f} ms {r['pct']:5.1f}%  x{r['calls']}")
    if a.out:
        with open(a.out, 'w') as f: json.dump(res, f, indent=1)
    else: json.dump({k: v for k, v in res.items() if k != 'profile'}, sys.stdout); print()
    return res


if __name__ == '__main__': main()
