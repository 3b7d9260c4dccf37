"""Milliseconds per training step: mbldm's `Learner` with the paper's callbacks vs the bare step, and each
component's share (measured by switching it off, one at a time).

The Learner step (`full`): `LatentDiffusion.loss_fn` (eps objective, Min-SNR 5, self-conditioning with p 0.5) of
the continuous model's U-Net, `MixedPrecisionCB` (bf16, CUDA only), `GradClipCB(1.0)`, `EMACB(0.995, every=10)`,
`CheckpointCB` every `--ckpt-every` steps (background writes), the default (fused) AdamW. The bare step: U-Net
forward + MSE backward + `torch.optim.AdamW` as constructed by default (and with `fused=True`), same autocast.

* CUDA (when present): the seed config (`seed_default()`: dim 80, mults 1 2 4 8, 54.55M parameters), batch 64 of
  6x64x64 latents, bf16, 60 timed steps, checkpoints every 30 (two per timed run), compiled variants included.
* CPU: the continuous experiment's small defaults (dim 16, mults 1 2 2, 2 heads of 8), batch 16 of 6x8x8
  latents, 30 timed steps, checkpoints every 15, `--threads` torch threads (default 1), no compiled variants
  unless `--compile yes` (CPU compilation takes minutes).

Variants run round-robin `--repeats` times (so load from other processes hits all alike); the median is
reported, as wall time and as this process's CPU time (all its threads; on a CPU shared with other jobs the
steadier measure, and the basis of the component shares there; on CUDA the shares use wall time). Data is a fixed pool of 4 batches already on the device. Writes JSON (device, torch version,
config, ms per step per variant, the share of each component) to `--out` and prints a table.

    python benchmarks/train_step.py --out train_step.json [--device cpu|cuda] [--steps N] [--repeats R]
"""
import argparse, contextlib, json, platform, statistics, sys, tempfile, time, warnings
from dataclasses import asdict, replace
from functools import partial
from pathlib import Path
import torch, torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a clone without installing

from mbldm.unet import Unet, UnetConfig, seed_default, count_params
from mbldm.continuous import LatentDiffusion
from mbldm.learner import Learner, MixedPrecisionCB, GradClipCB, EMACB, CheckpointCB


def device_info(dev: torch.device) -> dict:
    "The machine in words: CPU model, GPU name, torch and Python versions, threads."
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(l.split(':', 1)[1].strip() for l in open('/proc/cpuinfo') if l.startswith('model name'))
    except (OSError, StopIteration): pass
    d = dict(type=dev.type, cpu=cpu, torch=torch.__version__, python=platform.python_version(), threads=torch.get_num_threads())
    if dev.type == 'cuda': d.update(gpu=torch.cuda.get_device_name(dev), cuda=torch.version.cuda)
    return d


def config(dev: torch.device, a) -> dict:
    if dev.type == 'cuda':
        return dict(unet=seed_default(), batch=64, shape=(6, 64, 64), steps=a.steps or 60, warmup=10, ckpt_every=a.ckpt_every or 30)
    unet = UnetConfig(dim=16, dim_mults=(1, 2, 2), channels=6, self_condition=True, attn_heads=2, attn_dim_head=8)
    return dict(unet=unet, batch=16, shape=(6, 8, 8), steps=a.steps or 30, warmup=3, ckpt_every=a.ckpt_every or 15)


def batches(c, dev):
    g = torch.Generator().manual_seed(0)
    pool = [(torch.rand(c['batch'], *c['shape'], generator=g) * 2 - 1).to(dev) for _ in range(4)]
    it = iter(range(10**9))
    return lambda: pool[next(it) % len(pool)]


def sync(dev):
    if dev.type == 'cuda': torch.cuda.synchronize(dev)


def bare_run(c, dev, fused=False, compile=False):
    "A function timing `n` bare steps (forward + MSE backward + AdamW) after `warmup`."
    torch.manual_seed(0)
    model = Unet(c['unet']).to(dev)
    fwd = torch.compile(model) if compile else model
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, **(dict(fused=True) if fused else {}))
    data, ac = batches(c, dev), autocast(dev)
    def step():
        x = data()
        t = torch.randint(0, 1000, (len(x),), device=dev)
        with ac(): loss = F.mse_loss(fwd(x, t).float(), x)
        loss.backward()
        opt.step(); opt.zero_grad(set_to_none=True)
    def run(n, warmup):
        for _ in range(warmup): step()
        sync(dev); t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(n): step()
        sync(dev); return time.perf_counter() - t0, time.process_time() - c0
    return run


def autocast(dev):
    "bf16 autocast on CUDA, none on the CPU (what MixedPrecisionCB does)."
    return partial(torch.autocast, 'cuda', dtype=torch.bfloat16) if dev.type == 'cuda' else contextlib.nullcontext


def learner_run(c, dev, tmp, off=(), compile=False, opt_func=None):
    "A function timing `n` Learner steps after `warmup`, with the components in `off` switched off."
    torch.manual_seed(0)
    sc = 'self_cond' not in off
    model = Unet(replace(c['unet'], self_condition=sc)).to(dev)
    ld = LatentDiffusion(self_condition=sc)
    cbs = []
    if dev.type == 'cuda' and 'mixed_precision' not in off: cbs.append(MixedPrecisionCB(torch.bfloat16))
    if 'grad_clip' not in off: cbs.append(GradClipCB(1.0))
    if 'ema' not in off: cbs.append(EMACB(0.995, every=10))
    if 'checkpoint' not in off: cbs.append(CheckpointCB(tmp, every=c['ckpt_every'], keep=2, at_end=False))
    kw = {} if opt_func is None else dict(opt_func=opt_func)
    learn = Learner(model, ld.loss_fn, batches(c, dev), lr=1e-4, cbs=cbs, compile=compile, **kw)
    def run(n, warmup):
        learn.fit(learn.step + warmup)
        sync(dev); t0, c0 = time.perf_counter(), time.process_time()
        learn.fit(learn.step + n)  # fit returns once the last background checkpoint write is on disk
        sync(dev); return time.perf_counter() - t0, time.process_time() - c0
    return run


COMPONENTS = ('mixed_precision', 'grad_clip', 'ema', 'self_cond', 'checkpoint')


def variants(dev, compile: bool, tmp: Path) -> dict:
    "name -> factory of a timing function."
    v = {'bare': lambda c: bare_run(c, dev), 'bare_fused': lambda c: bare_run(c, dev, fused=True),
         'learner_full': lambda c: learner_run(c, dev, tmp/'full'),
         'learner_full-fused_opt': lambda c: learner_run(c, dev, tmp/'nofused', opt_func=torch.optim.AdamW)}
    for k in COMPONENTS:
        if k == 'mixed_precision' and dev.type != 'cuda': continue  # a no-op on the CPU
        v[f'learner_full-{k}'] = (lambda k: lambda c: learner_run(c, dev, tmp/k, off=(k,)))(k)
    v['learner_none'] = lambda c: learner_run(c, dev, tmp/'none', off=COMPONENTS)
    if compile:
        v['bare_fused+compile'] = lambda c: bare_run(c, dev, fused=True, compile=True)
        v['learner_full+compile'] = lambda c: learner_run(c, dev, tmp/'compiled', compile=True)
    return v


def count_syncs(c, dev, tmp, steps=20) -> float:
    "Host-device synchronisations per Learner step (CUDA sync debug mode), without checkpoints."
    run = learner_run(c, dev, tmp, off=('checkpoint',))
    run(1, 2)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        torch.cuda.set_sync_debug_mode('warn')
        try: run(steps, 0)
        finally: torch.cuda.set_sync_debug_mode(0)
    return sum('synchroniz' in str(x.message) for x in w) / steps


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--device', default=None, help='cpu or cuda (default: cuda when available)')
    ap.add_argument('--steps', type=int, default=None, help='timed steps per run (default: 60 CUDA, 30 CPU)')
    ap.add_argument('--ckpt-every', type=int, default=None, help='checkpoint period (default: 30 CUDA, 15 CPU)')
    ap.add_argument('--repeats', type=int, default=5, help='round-robin repeats of every variant (median reported)')
    ap.add_argument('--threads', type=int, default=1, help='torch CPU threads')
    ap.add_argument('--compile', choices=('auto', 'yes', 'no'), default='auto', help='compiled variants (auto: on CUDA)')
    ap.add_argument('--only', default=None, help='comma-separated variant names to run (default: all)')
    ap.add_argument('--out', default=None, help='write the JSON here (default: stdout)')
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    dev = torch.device(a.device or ('cuda' if torch.cuda.is_available() else 'cpu'))
    if dev.type == 'cuda' and not torch.cuda.is_available(): sys.exit('train_step.py: --device cuda but CUDA is not available')
    c = config(dev, a)
    compile = a.compile == 'yes' or (a.compile == 'auto' and dev.type == 'cuda')
    with tempfile.TemporaryDirectory() as tmp:
        vs = variants(dev, compile, Path(tmp))
        if a.only: vs = {k: vs[k] for k in a.only.split(',')}
        runs = {}
        for k, f in vs.items():
            t0 = time.perf_counter(); runs[k] = f(c)
            print(f'built {k} ({time.perf_counter() - t0:.1f} s)', file=sys.stderr, flush=True)
        ms, cpu = {k: [] for k in vs}, {k: [] for k in vs}
        for r in range(a.repeats):
            for k, run in runs.items():
                wall, proc = run(c['steps'], c['warmup'] if r == 0 else 1)
                ms[k].append(1e3 * wall / c['steps']); cpu[k].append(1e3 * proc / c['steps'])
                print(f'repeat {r + 1}/{a.repeats} {k}: {ms[k][-1]:.2f} ms/step wall, {cpu[k][-1]:.2f} ms CPU', file=sys.stderr, flush=True)
        syncs = count_syncs(c, dev, Path(tmp)/'syncs') if dev.type == 'cuda' else None
    med = {k: statistics.median(v) for k, v in ms.items()}
    # on a shared CPU the process CPU time (all threads of this process) is the steadier measure; on CUDA, wall time
    basis = {k: statistics.median(v) for k, v in (cpu if dev.type == 'cpu' else ms).items()}
    share = {k.split('-', 1)[1]: basis['learner_full'] - basis[k] for k in basis if k.startswith('learner_full-')}
    res = dict(device=device_info(dev),
               config=dict(unet=asdict(c['unet']), params=count_params(c['unet']), batch=c['batch'], latent_shape=list(c['shape']),
                           timed_steps=c['steps'], warmup=c['warmup'], ckpt_every=c['ckpt_every'], repeats=a.repeats,
                           autocast='bf16' if dev.type == 'cuda' else 'none', compile=compile),
               ms_per_step={k: round(v, 3) for k, v in med.items()},
               ms_per_step_all={k: [round(x, 3) for x in v] for k, v in ms.items()},
               cpu_ms_per_step={k: round(statistics.median(v), 3) for k, v in cpu.items()},
               component_basis='cpu_ms_per_step' if dev.type == 'cpu' else 'ms_per_step',
               component_ms={k: round(v, 3) for k, v in share.items()},
               host_syncs_per_step=syncs)
    if 'learner_full' in med and 'bare' in med: res['learner_overhead_over_bare_ms'] = round(basis['learner_full'] - basis['bare'], 3)
    print(f"{res['device']}\n{res['config']['params'] / 1e6:.2f}M parameters, batch {c['batch']} of {c['shape']}", file=sys.stderr)
    for k, v in med.items(): print(f'{k:>30}: {v:8.2f} ms/step wall, {statistics.median(cpu[k]):8.2f} ms CPU', file=sys.stderr)
    for k, v in share.items(): print(f'{"share of " + k:>30}: {v:8.2f} ms', file=sys.stderr)
    js = json.dumps(res, indent=1, default=str)
    if a.out: Path(a.out).write_text(js + '\n')
    else: print(js)
    return res


if __name__ == '__main__': main()
