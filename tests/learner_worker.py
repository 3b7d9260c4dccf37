"""Subprocess helper for tests/test_learner.py (and the shared toy problem it trains).

`python learner_worker.py kill DIR K N [VARIANT]`: train toward N steps with checkpoints in DIR and SIGKILL itself after
step K, once that step's checkpoint (if any) is on disk. VARIANT: `default` (fused AdamW), `plain` (the for-loop AdamW),
`compile` (torch.compile'd forward model), `nowait` (default, killed without waiting for a background checkpoint write).
`torchrun --nproc_per_node 2 learner_worker.py ddp DIR N`: one rank of a two-process DDP run (gloo on CPU);
each rank writes its final weights to DIR/rank{r}.safetensors, its losses to DIR/losses{r}.json, and the
weights of the same run stopped 3 steps early and resumed to DIR/resumed{r}.safetensors.
"""
import json, os, random, signal, sys
from functools import partial
from pathlib import Path
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from mbldm.learner import (Learner, Callback, CancelFitException, EMACB, GradClipCB, CheckpointCB, DDPCB)
from mbldm.core import save_tensors

def make_data(n=40):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 4, generator=g)
    y = x @ torch.randn(4, 2, generator=g) + 0.1 * torch.randn(n, 2, generator=g)
    return TensorDataset(x, y)

def loss_fn(model, batch):
    "MSE on inputs jittered with all three global RNGs (torch, numpy, python), so each RNG restore matters."
    x, y = batch
    x = x + 0.05 * torch.randn_like(x) + 0.01 * float(np.random.randn()) + 0.01 * random.random()
    loss = ((model(x) - y)**2).mean()
    return {'loss': loss, 'mse_x2': 2 * loss.detach()}

VARIANTS = {'default': {}, 'nowait': {}, 'plain': dict(opt_func=torch.optim.AdamW), 'compile': dict(compile=True)}

def make_learner(ckpt_dir, *cbs, every=3, lr=1e-2, variant='default'):
    "Dropout model, shuffled DataLoader (5 batches/epoch), StepLR, EMA, clipping, checkpoints every `every` steps."
    torch.manual_seed(0); np.random.seed(0); random.seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 2))
    dl = DataLoader(make_data(), batch_size=8, shuffle=True)
    sched = partial(torch.optim.lr_scheduler.StepLR, step_size=7, gamma=0.7)
    return Learner(model, loss_fn, dl, lr=lr, sched=sched, seed=3, **VARIANTS[variant],
                   cbs=[EMACB(0.9, every=2), GradClipCB(0.5), CheckpointCB(ckpt_dir, every=every, keep=2, at_end=False), *cbs])

class KillCB(Callback):
    "SIGKILL this process right after step `at` (after that step's checkpoint, if any, is on disk unless `wait=False`)."
    order = 100
    def __init__(self, at, wait=True): self.at, self.wait = at, wait
    def after_step(self):
        if self.learn.step != self.at: return
        if self.wait: self.learn.wait_save()
        os.kill(os.getpid(), signal.SIGKILL)

class StopAt(Callback):
    "End `fit` (cleanly) after step `at`."
    order = 100
    def __init__(self, at): self.at = at
    def after_step(self):
        if self.learn.step == self.at: raise CancelFitException

def main(argv):
    mode, out = argv[0], Path(argv[1])
    if mode == 'kill':
        k, n = int(argv[2]), int(argv[3])
        variant = argv[4] if len(argv) > 4 else 'default'
        make_learner(out, KillCB(k, wait=variant != 'nowait'), variant=variant).fit(n)
        sys.exit(3)  # not reached when the kill works
    if mode == 'ddp':
        n = int(argv[2])
        learn = make_learner(out/'ckpt', DDPCB(), every=5, lr=3e-2).fit(n)
        import torch.distributed as dist
        r = dist.get_rank()
        save_tensors(out/f"rank{r}.safetensors", learn.model.state_dict())
        (out/f'losses{r}.json').write_text(json.dumps(learn.recorder.losses))
        # the same run stopped after step n-3 and resumed from its last checkpoint (each rank gets its own RNGs back)
        make_learner(out/'ckpt2', DDPCB(), StopAt(n - 3), every=5, lr=3e-2).fit(n)
        again = make_learner(out/'ckpt2', DDPCB(), every=5, lr=3e-2)
        again.resume(out/'ckpt2')
        save_tensors(out/f"resumed{r}.safetensors", again.fit(n).model.state_dict())
        dist.destroy_process_group()

if __name__ == '__main__': main(sys.argv[1:])
