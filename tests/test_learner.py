"""Learner: exact resume (in-process at every step and after a real SIGKILL; fused and for-loop AdamW, a compiled
forward model, a kill during a background checkpoint write), checkpoint format, background-writer errors, DDP with two
CPU processes, gradient clipping, EMA maths, the recorder, W&B callback in disabled/offline mode, bad inputs."""
import json, os, random, signal, socket, subprocess, sys
from pathlib import Path
import numpy as np
import pytest
import torch
from torch import nn
from safetensors import safe_open
from safetensors.torch import load_file

from mbldm.learner import *
from learner_worker import make_learner, loss_fn, make_data, StopAt

ROOT = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).resolve().parent/'learner_worker.py'
N = 23  # steps; 5 batches per epoch, so runs cross epoch boundaries

def _env():
    env = dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1', WANDB_MODE='disabled')
    env['PYTHONPATH'] = os.pathsep.join([str(ROOT), env.get('PYTHONPATH', '')])
    return env

def assert_same(a, b, msg=''):
    "Bit-identical weights, EMA weights and optimizer state."
    for (k, x), (_, y) in zip(a.model.state_dict().items(), b.model.state_dict().items()): assert torch.equal(x, y), f'{msg} model {k}'
    for (k, x), (_, y) in zip(a.ema.model.state_dict().items(), b.ema.model.state_dict().items()): assert torch.equal(x, y), f'{msg} ema {k}'
    sa, sb = a.opt.state_dict()['state'], b.opt.state_dict()['state']
    assert sa.keys() == sb.keys()
    for i in sa:
        for k in sa[i]: assert torch.equal(sa[i][k], sb[i][k]), f'{msg} opt {i}.{k}'
    assert a.sched.state_dict() == b.sched.state_dict(), msg
    assert a.recorder.losses == b.recorder.losses, msg

_refs = {}
def reference(tmp_path_factory, variant='default'):
    "The uninterrupted N-step run of `variant` (built once per module)."
    if variant not in _refs: _refs[variant] = make_learner(tmp_path_factory.mktemp(f'ref-{variant}'), variant=variant).fit(N)
    return _refs[variant]

def test_default_optimizer_is_fused(tmp_path):
    assert make_learner(tmp_path).opt.defaults['fused'] is True  # the CPU has fused AdamW kernels
    assert make_learner(tmp_path, variant='plain').opt.defaults['fused'] is None

@pytest.mark.parametrize('variant', ['default', 'plain'])
def test_resume_after_stop(tmp_path, tmp_path_factory, variant):
    "Stop after step k (checkpoints every 3, epochs of 5), resume from the newest checkpoint: same as uninterrupted."
    ref = reference(tmp_path_factory, variant)
    for k in (2, 3, 4, 5, 8, 10, 15, 16, 21):  # before/at/after a checkpoint, at epoch ends, both at once (15)
        d = tmp_path/f'k{k}'
        make_learner(d, StopAt(k), variant=variant).fit(N)
        if not list_checkpoints(d): continue  # stopped before the first checkpoint
        learn = make_learner(d, variant=variant)
        p = learn.resume(d)
        assert learn.step == (k // 3) * 3 and p.name == f'step_{learn.step:07d}'
        assert_same(ref, learn.fit(N), f'{variant}, stopped at {k}:')

def _kill(tmp_path, k, variant='default'):
    r = subprocess.run([sys.executable, str(WORKER), 'kill', str(tmp_path), str(k), str(N), variant], env=_env(),
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == -signal.SIGKILL, f'{variant} k={k}: rc={r.returncode}\n{r.stderr[-3000:]}'

@pytest.mark.parametrize('variant', ['default', 'compile'])
def test_resume_after_sigkill(tmp_path, tmp_path_factory, variant):
    "A process killed with SIGKILL at a random step resumes (in another process) to the uninterrupted result."
    k = random.randint(4, N - 2)
    _kill(tmp_path, k, variant)
    assert latest_checkpoint(tmp_path).name == f'step_{(k // 3) * 3:07d}'
    learn = make_learner(tmp_path, variant=variant)
    learn.resume(tmp_path)
    assert_same(reference(tmp_path_factory, variant), learn.fit(N), f'{variant}, killed at {k}:')
    if variant == 'compile':  # the compiled run's checkpoints hold the bare network's keys and resume without compiling
        p = latest_checkpoint(tmp_path)
        assert set(load_file(p/'model.safetensors')) == set(learn.model.state_dict()) and not any('_orig_mod' in k for k in load_file(p/'model.safetensors'))
        plain = make_learner(tmp_path)
        assert plain.resume(tmp_path) == p and plain.step == 21
        saved = load_file(p/'model.safetensors')
        for k, v in plain.model.state_dict().items(): assert torch.equal(v, saved[k]), k
        assert plain.fit(N).step == N and np.isfinite(plain.recorder.losses[-2:]).all()  # (eager dropout draws other masks)

def test_kill_during_background_write(tmp_path, tmp_path_factory):
    "Killed right after starting a checkpoint write: either that checkpoint or the one before is complete, and resumes."
    k = random.choice(range(6, N - 2, 3))
    _kill(tmp_path, k, 'nowait')
    assert latest_checkpoint(tmp_path).name in (f'step_{k:07d}', f'step_{k - 3:07d}')
    learn = make_learner(tmp_path)
    learn.resume(tmp_path)
    assert_same(reference(tmp_path_factory), learn.fit(N), f'killed while writing {k}:')

def test_compiled_model_is_unwrapped(tmp_path):
    "A model passed in already compiled: `learn.model` is the bare network, checkpoints carry no `_orig_mod.` prefix."
    m = nn.Linear(4, 2)
    learn = Learner(torch.compile(m, backend='eager'), loss_fn, lambda: make_data()[:8])
    assert learn.model is m and learn.fwd_model is not m
    learn.save(tmp_path/'step_0000000')
    assert set(load_file(tmp_path/'step_0000000'/'model.safetensors')) == {'weight', 'bias'}
    with pytest.raises(TypeError, match='compile must be'): Learner(m, loss_fn, lambda: make_data()[:8], compile='yes')

def test_background_write_error_surfaces(tmp_path, monkeypatch):
    "An error in the checkpoint writer thread is raised in the training thread, naming the checkpoint; no folder appears."
    import mbldm.learner as L
    def broken(path, tensors): raise OSError('disk full (simulated)')
    monkeypatch.setattr(L, 'save_tensors', broken)
    with pytest.raises(RuntimeError, match=r'writing checkpoint .*step_0000003.* failed.*disk full'): make_learner(tmp_path).fit(5)
    assert list_checkpoints(tmp_path) == []

def test_recorder_keeps_every_loss():
    "Losses stay on the device between flushes, and the recorder still holds every step's exact loss."
    class Seen(Callback):
        order = 40
        def __init__(self): self.xs = []
        def after_step(self): self.xs.append(self.learn.loss.item())
    torch.manual_seed(0)
    learn = Learner(nn.Linear(4, 2), loss_fn, lambda: make_data()[:8], lr=0.1, cbs=[Seen()])
    learn.recorder.every = 4
    learn.fit(6)
    assert len(learn.recorder._queue) == 2 and torch.is_tensor(learn.recorder._queue[0])  # not yet moved to the host
    assert learn.recorder.losses == learn.seen.xs and learn.loss_value == learn.seen.xs[-1]
    assert learn.recorder._queue == [] and learn.recorder.steps == list(range(1, 7))

def test_checkpoint_files(tmp_path):
    learn = make_learner(tmp_path).fit(10)  # saves at 3, 6, 9, keeps 2
    assert [p.name for p in list_checkpoints(tmp_path)] == ['step_0000006', 'step_0000009']
    assert sorted(p.name for p in tmp_path.rglob('*')) == sorted(
        ['step_0000006', 'step_0000009'] + 2 * ['model.safetensors', 'ema.safetensors', 'state.pt'])  # no temp files
    p = tmp_path/'step_0000009'
    with safe_open(p/'model.safetensors', 'pt') as f: assert set(f.keys()) == set(learn.model.state_dict())
    st = torch.load(p/'state.pt', weights_only=True)  # no pickle needed
    assert st['step'] == 9 and st['epoch'] == 1 and st['batch_in_epoch'] == 4
    assert st['rng'][0]['torch'].dtype == torch.uint8 and set(st['cbs']) == {'recorder'}
    assert load_file(p/'ema.safetensors').keys() == learn.ema.model.state_dict().keys()

def test_interrupted_save_is_ignored(tmp_path):
    learn = make_learner(tmp_path).fit(4)
    junk = tmp_path/'.step_0000005.tmp-999'; junk.mkdir(); (junk/'model.safetensors').write_bytes(b'half')
    (tmp_path/'step_0000006').mkdir()  # no state.pt: incomplete
    assert latest_checkpoint(tmp_path).name == 'step_0000003'
    learn.save(tmp_path/'step_0000003')  # overwriting a checkpoint works
    assert latest_checkpoint(tmp_path/'step_0000003') == tmp_path/'step_0000003'
    learn.fit(5)  # the next fit removes the debris of the interrupted save
    assert not junk.exists() and not list(tmp_path.glob('.*'))

def test_bad_inputs(tmp_path):
    with pytest.raises(FileNotFoundError, match='no checkpoint'): make_learner(tmp_path).resume(tmp_path)
    empty = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.zeros(0, 4), torch.zeros(0, 2)), batch_size=2)
    with pytest.raises(ValueError, match='no batches'): Learner(nn.Linear(4, 2), loss_fn, empty).fit(1)

def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]

def test_ddp_two_cpu_processes(tmp_path):
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2', '--master_addr', '127.0.0.1',
           '--master_port', str(_free_port()), str(WORKER), 'ddp', str(tmp_path), '30']
    r = subprocess.run(cmd, env=dict(_env(), MASTER_ADDR='127.0.0.1'), cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    w0, w1 = load_file(tmp_path/'rank0.safetensors'), load_file(tmp_path/'rank1.safetensors')
    for k in w0: assert torch.equal(w0[k], w1[k]), k
    for r in (0, 1):  # stopped at step 27, resumed from step 25: bit-identical on both ranks
        w = load_file(tmp_path/f'resumed{r}.safetensors')
        for k in w0: assert torch.equal(w0[k], w[k]), f'rank {r} resumed: {k}'
    l0, l1 = (json.loads((tmp_path/f'losses{r}.json').read_text()) for r in (0, 1))
    assert l0 != l1  # each rank saw its own shard
    assert np.mean(l0[-5:]) < 0.5 * np.mean(l0[:5]), (l0[:5], l0[-5:])
    st = torch.load(latest_checkpoint(tmp_path/'ckpt')/'state.pt', weights_only=True)
    assert st['step'] == 30 and len(st['rng']) == 2 and not torch.equal(st['rng'][0]['torch'], st['rng'][1]['torch'])

def test_grad_clip():
    torch.manual_seed(0)
    big = lambda m, b: 1e4 * loss_fn(m, b)['loss']
    class Norm(Callback):
        order = 15
        def after_backward(self): self.n = torch.cat([p.grad.flatten() for p in self.learn.model.parameters()]).norm()
    learn = Learner(nn.Linear(4, 2), big, lambda: make_data()[:8], cbs=[GradClipCB(0.25), Norm()]).fit(1)
    assert learn.grad_norm > 1 and abs(learn.norm.n.item() - 0.25) < 1e-5

def test_ema_math():
    torch.manual_seed(0)
    learn = Learner(nn.Linear(4, 2), loss_fn, lambda: make_data()[:8], lr=0.1, cbs=[EMACB(decay=0.8, every=3)])
    e0 = [p.clone() for p in learn.ema.model.parameters()]
    learn.fit(2)  # no update before step 3
    for a, b in zip(e0, learn.ema.model.parameters()): assert torch.equal(a, b)
    learn.fit(3)
    for a, e, w in zip(e0, learn.ema.model.parameters(), learn.model.parameters()):
        torch.testing.assert_close(e, 0.8 * a + 0.2 * w, rtol=0, atol=1e-6)
    assert not any(p.requires_grad for p in learn.ema.model.parameters()) and not learn.ema.model.training

def test_ema_start_and_warmup():
    torch.manual_seed(0)
    learn = Learner(nn.Linear(4, 2), loss_fn, lambda: make_data()[:8], lr=0.1, cbs=[EMACB(0.999, every=1, start=4, warmup_power=0.75)])
    learn.fit(4)  # copies until `start`
    for e, w in zip(learn.ema.model.parameters(), learn.model.parameters()): assert torch.equal(e, w)
    learn.step = 6
    assert abs(learn.ema.current_decay() - (1 - 2**-0.75)) < 1e-12

def test_cancel_step_skips_update():
    class Skip(Callback):
        def after_loss(self): raise CancelStepException
    torch.manual_seed(0)
    m = nn.Linear(4, 2); w = m.weight.clone()
    learn = Learner(m, loss_fn, lambda: make_data()[:8], cbs=[Skip()]).fit(3)
    assert learn.step == 3 and torch.equal(m.weight, w) and m.weight.grad is None

@pytest.mark.parametrize('mode', ['disabled', 'offline'])
def test_wandb_cb(tmp_path, monkeypatch, mode):
    monkeypatch.setenv('WANDB_DIR', str(tmp_path))
    seen = []
    def sample_fn(model):
        seen.append(model.training)
        return torch.rand(2, 3, 8, 8)
    def run(log):
        torch.manual_seed(0); np.random.seed(0); random.seed(0)
        cbs = [EMACB(every=2)] + ([WandbCB(every=2, sample_fn=sample_fn, sample_every=3, mode=mode, dir=tmp_path)] if log else [])
        return Learner(nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.3), nn.Linear(8, 2)), loss_fn,
                       lambda: make_data()[:8], cbs=cbs).fit(6)
    logged, plain = run(True), run(False)
    assert seen == [False, False]  # sampled twice, in eval mode
    for a, b in zip(logged.model.parameters(), plain.model.parameters()): assert torch.equal(a, b)  # sampling leaves RNG alone
    if mode == 'offline': assert list(tmp_path.glob('wandb/offline-run-*'))
    m = logged.wandb.metrics()  # one transfer from the device for all scalars
    assert set(m) == {'loss', 'mse_x2', 'lr'} and m['loss'] == logged.loss_value == logged.recorder.losses[-1]
    assert abs(m['mse_x2'] - 2 * m['loss']) < 1e-5 * m['loss']
