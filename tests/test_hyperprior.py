"""Ballé 2018 scale hyperprior: entropy coding, real files, loss, robustness against damaged files."""
import struct, time, zlib
import pytest, torch
from mbldm.core import sample_image, save_tensors
from mbldm.checkpoints import KINDS
from mbldm.container import compress, decompress, read_header, pack, CodecFileError
from mbldm.basecodecs import base_codec, CODECS
from mbldm.hyperprior import (Hyperprior, update_tables, hp_compress, hp_decompress, hyperprior_loss, hyperprior_params,
                              param_groups, aux_parameters, save_hyperprior_config, HyperpriorCodec, weights_identity)

@pytest.fixture(autouse=True)
def _kind(monkeypatch): monkeypatch.setitem(KINDS, 'hyperprior', 'mbldm.hyperprior')

def _model(N=16, M=24, seed=0):
    torch.manual_seed(seed); return update_tables(Hyperprior(N, M, lmbda=0.013))

@pytest.fixture
def ckpt(tmp_path):
    m = Hyperprior(16, 24, lmbda=0.013); torch.manual_seed(0)
    d = tmp_path/'hp'; save_hyperprior_config(d, m, ema=False); save_tensors(d/'model.safetensors', m.state_dict())
    return d

def test_gaussian_conditional_roundtrip_exact_with_outliers():
    gc = _model().net.gaussian_conditional
    g = torch.Generator().manual_seed(1)
    scales = torch.exp(torch.empty(1, 8, 16, 16).uniform_(-3, 5, generator=g))   # 0.05 .. 150: below and inside the table
    y = torch.randn(1, 8, 16, 16, generator=g) * scales
    y[0, 0, 0, :4] = torch.tensor([1e4, -3e4, 500., -777.])                        # far outside every table
    idx = gc.build_indexes(scales)
    s = gc.compress(y, idx)
    y_hat = gc.decompress(s, idx)
    assert torch.equal(y_hat, torch.round(y))

def test_factorized_prior_roundtrip_exact_with_outliers():
    eb = _model().net.entropy_bottleneck
    g = torch.Generator().manual_seed(2)
    z = torch.randn(1, 16, 4, 4, generator=g) * 3
    z[0, :3, 0, 0] = torch.tensor([2e3, -5e3, 300.])
    s = eb.compress(z)
    med = eb._get_medians().detach()
    assert torch.equal(eb.decompress(s, z.shape[-2:]), torch.round(z - med) + med)

def test_coded_size_next_to_likelihood_estimate_256():
    m, x = _model(), sample_image('astronaut')[:, :256, :256]
    s = hp_compress(m, x)
    with torch.no_grad(): est = m(x[None])['bpp'].item() * 256 * 256
    real = 8 * (len(s['z']) + len(s['y']))
    gap = real - est
    print(f"256x256: coded {real} bits, likelihood estimate {est:.1f} bits, gap {gap:+.1f} bits ({100 * gap / est:+.2f}%)")
    assert abs(gap) <= 0.01 * est + 2 * 64, (real, est)

@pytest.mark.parametrize('size', [(64, 64), (37, 50), (70, 129)])
def test_compress_decompress_equals_eval_forward(size):
    m = _model()
    x = sample_image('coffee')[:, :size[0], :size[1]]
    x_dec = hp_decompress(m, hp_compress(m, x), size)
    with torch.no_grad(): ref = m(x[None])['x_hat'][0].clamp(0, 1)
    assert x_dec.shape == x.shape and (x_dec - ref).abs().max() <= 1e-4

def test_tables_must_be_built():
    with pytest.raises(RuntimeError, match='update_tables'): hp_compress(Hyperprior(16, 24), torch.rand(3, 64, 64))

def test_loss_params_and_groups():
    m = Hyperprior(16, 24, lmbda=0.05)
    x = torch.rand(2, 3, 64, 64)
    torch.manual_seed(0); l = hyperprior_loss(m, x)
    assert torch.allclose(l['rd'], 0.05 * 255 ** 2 * l['mse'] + l['bpp'])
    assert torch.allclose(l['loss'].detach(), l['rd'] + l['aux'])
    groups = param_groups(m, 1e-4, 1e-3)
    assert [g['lr'] for g in groups] == [1e-4, 1e-3] and groups[1]['params'] == aux_parameters(m)
    l['loss'].backward()   # the rate-distortion part never reaches the quantiles, the aux part only them
    assert all(p.grad is not None for p in groups[0]['params'] if p.requires_grad)
    m.zero_grad(); out = m(x); (out['bpp'].mean() + ((out['x_hat'] - x) ** 2).mean()).backward()
    assert aux_parameters(m)[0].grad is None or aux_parameters(m)[0].grad.abs().sum() == 0
    assert hyperprior_params(16, 24) == sum(p.numel() for p in m.parameters())
    assert hyperprior_params(40, 56) == sum(p.numel() for p in Hyperprior(40, 56).parameters())

def test_files_through_the_registry(ckpt):
    c, rate = base_codec(f'hyperprior:{ckpt}')
    assert isinstance(c, HyperpriorCodec) and rate == 0.013 and len(c.identity) == 16
    x = sample_image('chelsea')[:, :70, :90]
    data = compress(x, f'hyperprior:{ckpt}')
    hd = read_header(data)
    assert hd.kind == 'hyperprior' and set(hd.sections) == {'ZSTR', 'YSTR'} and hd.spec == str(ckpt)[-64:]
    x_dec = decompress(data) if len(str(ckpt)) <= 64 else decompress(data, c)
    with torch.no_grad(): ref = c.model(x[None])['x_hat'][0].clamp(0, 1)
    assert (x_dec - ref).abs().max() <= 1e-4
    other = HyperpriorCodec(ckpt); torch.nn.init.zeros_(other.model.net.g_s[0].bias)
    other.identity = weights_identity(other.model)
    with pytest.raises(CodecFileError, match='id'): decompress(data, other)

def _repack(data, **secs):
    hd = read_header(data)
    s = {t: bytes(data[o:o + n]) for t, (o, n) in hd.sections.items()} | secs
    return pack(hd.kind, hd.spec, hd.identity, hd.size, s)

def test_damaged_files_are_rejected_cleanly(ckpt):
    c, _ = base_codec(f'hyperprior:{ckpt}')
    x = sample_image('astronaut')[:, :64, :96]
    data = compress(x, c)
    g = torch.Generator().manual_seed(0)
    for i in range(30):   # flipped bytes anywhere: the container's checks
        b = bytearray(data); p = torch.randint(len(b), (1,), generator=g).item(); b[p] ^= 1 + i % 255
        with pytest.raises(CodecFileError): decompress(bytes(b), c)
    with pytest.raises(CodecFileError): decompress(data[:-7], c)
    hd = read_header(data); z, y = (bytes(data[o:o + n]) for o, n in (hd.sections['ZSTR'], hd.sections['YSTR']))
    # damaged strings inside a valid container (CRC recomputed): an error or an image, never a crash or a hang
    cases = [dict(YSTR=b''), dict(ZSTR=b''), dict(YSTR=y[:len(y) // 2]), dict(ZSTR=bytes(64)), dict(YSTR=b'\xff' * len(y)),
             dict(YSTR=torch.randint(256, (len(y),), generator=g, dtype=torch.uint8).numpy().tobytes()),
             dict(ZSTR=torch.randint(256, (len(z),), generator=g, dtype=torch.uint8).numpy().tobytes())]
    for case in cases:
        t0 = time.perf_counter()
        try: out = decompress(_repack(data, **case), c)
        except CodecFileError: continue
        finally: assert time.perf_counter() - t0 < 10
        assert out.shape == x.shape and torch.isfinite(out).all() and 0 <= out.min() and out.max() <= 1
    with pytest.raises(CodecFileError, match='sections'): decompress(pack('hyperprior', c.spec(), c.identity, (64, 96), {'YSTR': y}), c)

def test_bad_specs(tmp_path):
    with pytest.raises(FileNotFoundError, match='does not exist'): base_codec(f'hyperprior:{tmp_path}/nothing')
    with pytest.raises(ValueError, match='quality'):
        from mbldm.hyperprior import quality_channels; quality_channels(9)

def test_which_weights_is_explicit(ckpt):
    import json
    from mbldm.hyperprior import load_hyperprior
    raw = weights_identity(load_hyperprior(ckpt))                                   # config: "ema": false
    c = json.loads((ckpt/'config.json').read_text()); del c['ema']; (ckpt/'config.json').write_text(json.dumps(c))
    with pytest.raises(FileNotFoundError, match='ema=False'): load_hyperprior(ckpt)  # no declaration, no EMA file: error
    assert weights_identity(load_hyperprior(ckpt, ema=False)) == raw
    m = Hyperprior(16, 24, lmbda=0.013); save_tensors(ckpt/'ema.safetensors', m.state_dict())
    assert weights_identity(load_hyperprior(ckpt)) == weights_identity(m) != raw     # EMA by default when present
    with pytest.raises(FileNotFoundError, match='shipped models: tiny'): load_hyperprior('no-such-model')
