"""CDC: compressor and U-Net shapes and sizes, the loss, decoding, real files and damaged files."""
import time
import pytest, torch
from torch import nn
from mbldm.core import sample_image, save_tensors
from mbldm.checkpoints import KINDS
from mbldm.container import compress, decompress, read_header, pack, CodecFileError
from mbldm.basecodecs import base_codec
from mbldm.diffusion import loss_weight
from mbldm.learner import Learner
from mbldm.cdc import (CDC, CdcCompressor, CdcUNet, cdc_diffusion, CdcLoss, cdc_param_groups, LambdaWarmupCB, cdc_decode,
                       update_cdc_tables, cdc_compress, cdc_latents, cdc_decompress, count_cdc_params, save_cdc_config, CdcCodec)

SMALL = dict(compressor=dict(dim=8, hyper_dims_mults=(2, 2, 2), out_channels=8), unet=dict(dim=8, context_channels=8))

@pytest.fixture(autouse=True)
def _kind(monkeypatch): monkeypatch.setitem(KINDS, 'cdc', 'mbldm.cdc')

@pytest.fixture
def ckpt(tmp_path):
    torch.manual_seed(0); m = CDC(**SMALL)
    d = tmp_path/'cdc'; save_cdc_config(d, m, cdc_diffusion('x'), lmbda=0.0032, ema=False); save_tensors(d/'model.safetensors', m.state_dict())
    return d

def test_paper_sizes_without_allocating():
    n = count_cdc_params()
    assert 13.7e6 < n['compressor'] < 13.9e6 and 40.0e6 < n['unet'] < 40.2e6
    assert count_cdc_params(SMALL['compressor'])['compressor'] == sum(p.numel() for p in CdcCompressor(**SMALL['compressor']).parameters())

def test_compressor_shapes_and_rate():
    c = CdcCompressor()   # the released x-param configuration
    x = torch.rand(1, 3, 256, 256) * 2 - 1
    c.eval()
    with torch.no_grad(): o1, o2 = c(x), c(x)
    assert o1['y_hat'].shape == (1, 256, 16, 16) and o1['z_hat'].shape == (1, 256, 4, 4)
    assert [tuple(m.shape[1:]) for m in o1['context']] == [(64, 256, 256), (64, 128, 128), (128, 64, 64), (192, 32, 32)]
    assert torch.equal(o1['bpp'], o2['bpp']) and (o1['bpp'] > 0).all() and torch.isfinite(o1['bpp']).all()
    with pytest.raises(ValueError, match='multiples of 64'): c(torch.zeros(1, 3, 96, 64))

def test_unet_context_and_time():
    net = CdcUNet(dim=8, context_channels=8)
    ctx = [torch.randn(2, c, 64 >> i, 64 >> i) for i, c in enumerate(net.ctx_channels)]
    x, t = torch.randn(2, 3, 64, 64), torch.tensor([0.2, 0.9])
    out = net(x, t, ctx)
    assert out.shape == (2, 3, 64, 64) and not torch.allclose(out, net(x, t, [c * 2 for c in ctx]))
    with pytest.raises(TypeError, match='t/T'): net(x, torch.tensor([1, 2]), ctx)

def test_loss_rho0_snr_weight_and_gradients():
    torch.manual_seed(0); m, d = CDC(**SMALL), cdc_diffusion('x')
    l = CdcLoss(d, lmbda=0.02)(m, torch.rand(2, 3, 64, 64))
    assert torch.allclose(l['main'], 0.02 * l['bpp'] + l['D'])
    l['loss'].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in (m.compressor.analysis[0][0].block1[0].weight, m.unet.head[1].weight))
    w, snr = loss_weight(d.sched, torch.arange(d.T), 'x0', 'min_snr', 5.), d.sched.snr.float()
    assert w.max() <= 5 and torch.allclose(w[snr < 5], snr[snr < 5]) and (w[snr >= 5] == 5).all()
    assert (d.T, d.schedule, cdc_diffusion('eps').T, cdc_diffusion('eps').schedule) == (8193, 'cosine', 20000, 'linear')
    b = cdc_diffusion('eps').sched.betas
    assert abs(b[0].item() - 5e-6) < 1e-12 and abs(b[-1].item() - 1e-3) < 1e-12

def test_lpips_frozen_outside_optimizer_and_rho_weights():
    torch.manual_seed(0); m = CDC(**SMALL)
    lf = CdcLoss(cdc_diffusion('x'), lmbda=0.01, rho=0.9, lpips_net='alex', allow_random_backbone=True)
    assert 'RANDOM' in lf.lpips_label and all(not p.requires_grad for p in lf.lpips.parameters())
    l = lf(m, torch.rand(2, 3, 64, 64))
    assert torch.allclose(l['main'], 0.01 * l['bpp'] + 0.1 * l['D'] + 0.9 * l['lpips'], atol=1e-6)
    learn = Learner(m, lf, lambda: torch.rand(2, 3, 64, 64), opt_func=torch.optim.Adam, params=cdc_param_groups(m))
    learn.fit(1)
    opt_ids = {id(p) for g in learn.opt.param_groups for p in g['params']}
    assert not opt_ids & {id(p) for p in lf.lpips.parameters()} and opt_ids == {id(p) for p in m.parameters()}
    assert all(p.grad is None for p in lf.lpips.parameters())
    with pytest.raises(ValueError, match='rho'): CdcLoss(cdc_diffusion('x'), rho=1.)

def test_warmup_lambda():
    m, lf = CDC(**SMALL), CdcLoss(cdc_diffusion('x'), lmbda=0.5)
    seen = []
    def loss(model, batch): seen.append(lf.lmbda); return lf(model, batch)
    Learner(m, loss, lambda: torch.rand(1, 3, 64, 64), cbs=[LambdaWarmupCB(lf, 0.5, warmup_steps=2)]).fit(3)
    assert seen == [1e-6, 1e-6, 0.5]

class Oracle(nn.Module):
    def __init__(self, x0): super().__init__(); self.x0, self.p, self.calls = x0, nn.Parameter(torch.zeros(())), []
    def forward(self, x, t, context): self.calls.append(t.clone()); return self.x0 + 0 * self.p

@pytest.mark.parametrize('gamma', [0., 0.6, 0.8, 1.])
def test_oracle_returns_x0(gamma):
    x0 = torch.rand(2, 3, 32, 32) * 2 - 1
    out = cdc_decode(Oracle(x0), cdc_diffusion('x'), [torch.zeros(2, 1, 32, 32)], gamma=gamma, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(out, (x0 + 1) / 2, atol=1e-5)

def test_single_step_is_one_call_at_T_minus_1():
    x0 = torch.rand(1, 3, 32, 32) * 4 - 2          # outside [-1, 1]: the output is the clamped prediction
    o, d = Oracle(x0), cdc_diffusion('x')
    out = cdc_decode(o, d, [torch.zeros(1, 1, 32, 32)], gamma=0.8, steps=1, generator=torch.Generator().manual_seed(0))
    assert len(o.calls) == 1 and torch.allclose(o.calls[0], torch.tensor([(d.T - 1) / d.T]))
    assert torch.allclose(out, (x0.clamp(-1, 1) + 1) / 2, atol=1e-6)

def test_files_exact_latents_determinism_and_gamma(ckpt):
    c, rate = base_codec(f'cdc:{ckpt}')
    assert isinstance(c, CdcCodec) and rate == 0.0032 and c.gamma == 0.8
    x = sample_image('coffee')[:, :50, :70]
    s = cdc_compress(c.model, x)
    assert torch.equal(cdc_latents(c.model, s, (50, 70)), s['y_hat'])     # the decoder's y_hat is the encoder's, bit for bit
    g0 = CdcCodec(ckpt, gamma=0., steps=3)
    data = compress(x, g0)
    assert data == compress(x, CdcCodec(ckpt, gamma=1., steps=5))      # the file (so the rate) depends on neither gamma nor steps
    a, b = decompress(data, g0), decompress(data, g0)
    assert torch.equal(a, b) and a.shape == x.shape
    assert not torch.equal(a, decompress(data, CdcCodec(ckpt, gamma=1., steps=3)))
    hd = read_header(data)
    assert hd.kind == 'cdc' and set(hd.sections) == {'ZSTR', 'YSTR'}

def test_damaged_files_are_rejected_cleanly(ckpt):
    c = CdcCodec(ckpt, gamma=0., steps=2)
    x = sample_image('astronaut')[:, :64, :64]
    data = compress(x, c)
    g = torch.Generator().manual_seed(0)
    for i in range(20):
        b = bytearray(data); p = torch.randint(len(b), (1,), generator=g).item(); b[p] ^= 1 + i
        with pytest.raises(CodecFileError): decompress(bytes(b), c)
    hd = read_header(data)
    secs = {t: bytes(data[o:o + n]) for t, (o, n) in hd.sections.items()}
    for case in [dict(YSTR=b''), dict(ZSTR=b''), dict(YSTR=secs['YSTR'][:3]), dict(YSTR=b'\xff' * 50),
                 dict(ZSTR=torch.randint(256, (40,), generator=g, dtype=torch.uint8).numpy().tobytes())]:
        t0 = time.perf_counter()
        try: out = decompress(pack('cdc', hd.spec, hd.identity, hd.size, secs | case), c)
        except CodecFileError: continue
        finally: assert time.perf_counter() - t0 < 20
        assert out.shape == x.shape and torch.isfinite(out).all() and 0 <= out.min() and out.max() <= 1
    other = CdcCodec(ckpt); torch.nn.init.zeros_(other.model.unet.head[1].bias)
    from mbldm.hyperprior import weights_identity
    other.identity = weights_identity(other.model)
    with pytest.raises(CodecFileError, match='id'): decompress(data, other)

def test_file_codec_for_other_gamma_and_steps(ckpt, tmp_path):
    x = sample_image('coffee')[:, :64, :64]
    f = tmp_path/'x.mbl'; f.write_bytes(compress(x, CdcCodec(ckpt, gamma=0., steps=2)))
    from mbldm.cdc import file_codec
    from mbldm.container import decompress_file
    c = file_codec(f, gamma=0., steps=2, ckpt=ckpt)
    assert (c.gamma, c.steps) == (0., 2) and torch.equal(decompress_file(f, None, c), decompress_file(f, None, c))
    g = tmp_path/'j.mbl'; g.write_bytes(compress(x, 'jpeg:50'))
    with pytest.raises(ValueError, match='cdc files only'): file_codec(g)
