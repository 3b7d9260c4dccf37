"""The learned context model (mbldm.context_model): integer inference that no BLAS can change, bit-exact round trips,
streams that name their model, checked model files, and the shipped model behind `SPEC+ec`.
A tiny model is trained here on two scikit-image photos' index maps (seconds); the shipped one is a package file."""
import time
import numpy as np
import pytest
import torch
import constriction
from mbldm.core import sample_image
from mbldm.codec import load_codec
from mbldm.container import compress, decompress, read_header, header_bytes, pack, CodecFileError
from mbldm.entropy import (encode_indices, decode_indices, estimate_bits, channel_bits, EntropyCodec, LEARNED, ID_BYTES, _head, _FAMILY)
import mbldm.context_model as cmm
from mbldm.context_model import (ContextModel, fit_context_model, save_context_model, load_context_model, shipped_context_model,
                                 int_freqs, exp_table, n_features, K)

@pytest.fixture(scope='module')
def opq(): return load_codec('OPQ-32-8-8')

@pytest.fixture(scope='module')
def tiny(opq):
    torch.set_num_threads(1)
    maps = [opq.encode(sample_image(n)[:, :160, :240])[0].numpy() for n in ('coffee', 'chelsea')]
    return fit_context_model(opq, maps, steps=120, batch_size=256, hidden=8)

@pytest.fixture(scope='module')
def codes(opq): return opq.encode(sample_image('astronaut')[:, :200, :256])[0].numpy()

def test_roundtrip_bit_exact_and_size(tiny, codes):
    rng = np.random.default_rng(0)
    maps = {'photo': codes, 'same': np.full((6, 9, 13), 255), 'every code': np.stack([rng.permutation(256).reshape(16, 16) for _ in range(6)]),
            'one patch': rng.integers(0, 256, (6, 1, 1)), 'one row': rng.integers(0, 256, (6, 1, 40)), 'one column': rng.integers(0, 256, (6, 40, 1))}
    for name, z in maps.items():
        s = encode_indices(z, 'OPQ-32-8-8', LEARNED, cmodel=tiny)
        assert s[0] == 4 and s[1:1 + ID_BYTES].hex() == tiny.identity[:16], name
        back = decode_indices(s, 'OPQ-32-8-8', z.shape, tiny)
        assert back.dtype == np.uint8 and np.array_equal(back, z), name
        est = estimate_bits(z, 'OPQ-32-8-8', LEARNED, cmodel=tiny)
        assert abs(8 * (len(s) - _head(4, 6)) - est) <= 0.01 * est + 32, (name, len(s), est)  # within 1% (+ the coder's last word)
    assert np.isclose(channel_bits(codes, 'OPQ-32-8-8', LEARNED, cmodel=tiny).sum(), estimate_bits(codes, 'OPQ-32-8-8', LEARNED, cmodel=tiny))

def _extreme(tiny, seed=0):
    "A model with random weights over the whole int16 range: activations reach the clip, products ~2**35."
    g = torch.Generator().manual_seed(seed)
    ch = [{k: (torch.randint(-cmm.WMAX, cmm.WMAX + 1, v.shape, generator=g, dtype=torch.int64) // (1 if v.dtype == torch.int16 else 4)).to(v.dtype)
           for k, v in c.items()} for c in tiny.tensors]
    return ContextModel('OPQ-32-8-8', tiny.codec_identity, ch, tiny.exp_t)

@pytest.mark.parametrize('which', ['trained', 'extreme'])
def test_integer_inference_does_not_depend_on_blas(tiny, codes, monkeypatch, which):
    "The float64 matrix products of integers equal numpy's int64 products, so the stream is the same byte for byte."
    cm = tiny if which == 'trained' else _extreme(tiny)
    s = encode_indices(codes, 'OPQ-32-8-8', LEARNED, cmodel=cm)
    calls = []
    def int64_mm(a, w): calls.append(1); return a.astype(np.int64) @ w.T.astype(np.int64)
    monkeypatch.setattr(cmm, '_mm', int64_mm)
    assert encode_indices(codes, 'OPQ-32-8-8', LEARNED, cmodel=cm) == s and calls
    assert np.array_equal(decode_indices(s, 'OPQ-32-8-8', codes.shape, cm), codes)

def test_frequencies_are_batch_invariant_integers(tiny):
    rng = np.random.default_rng(1)
    f, m = rng.integers(0, K + 1, (500, n_features(3))), rng.integers(0, K, 500)
    whole = tiny.freqs(3, f, m)
    parts = np.concatenate([tiny.freqs(3, f[i:i + 13], m[i:i + 13]) for i in range(0, 500, 13)])
    assert np.array_equal(whole, parts) and (whole >= 1).all() and (whole == np.round(whole)).all()
    assert whole.sum(1).max() < 2.0**53  # constriction's float64 normalisation sums exactly

def test_stream_names_its_model(tiny, codes, opq):
    s = encode_indices(codes, 'OPQ-32-8-8', LEARNED, cmodel=tiny)
    with pytest.raises(ValueError, match='coded with the learned context model .*decoding needs it'): decode_indices(s, 'OPQ-32-8-8', codes.shape)
    other = fit_context_model(opq, [codes], steps=2, batch_size=16, hidden=8, seed=1)
    with pytest.raises(ValueError, match=f'coded with the learned context model {tiny.identity[:16]}, not with'): decode_indices(s, 'OPQ-32-8-8', codes.shape, other)
    with pytest.raises(ValueError, match="needs its context model"): encode_indices(codes, 'OPQ-32-8-8', LEARNED)
    with pytest.raises(ValueError, match="is for OPQ-32-8-8, not PQ-32-8-8"): encode_indices(codes, 'PQ-32-8-8', LEARNED, cmodel=tiny)
    with pytest.raises(ValueError, match="takes no flags"): encode_indices(codes, 'OPQ-32-8-8', LEARNED, flags=[0] * 6, cmodel=tiny)

def test_damaged_learned_streams_rejected_cleanly(tiny, codes):
    s = encode_indices(codes, 'OPQ-32-8-8', LEARNED, cmodel=tiny)
    r = np.random.default_rng(2)
    cases = []
    for _ in range(30):
        b = bytearray(s); k = int(r.integers(ID_BYTES + 5, len(b))); b[k] ^= int(r.integers(1, 256)); cases.append(bytes(b))
    cases += [s[:n] for n in (1, 9, 13, len(s) - 4)]
    for bad in cases:
        t0 = time.perf_counter()
        with pytest.raises(ValueError, match='corrupted entropy-coded stream'): decode_indices(bad, 'OPQ-32-8-8', codes.shape, tiny)
        assert time.perf_counter() - t0 < 5

def test_model_files_checked(tiny, tmp_path):
    f = save_context_model(tiny, tmp_path/'m.safetensors')
    again = load_context_model(f)
    assert again.identity == tiny.identity and again.recipe['steps'] == 120 and repr(again).startswith("ContextModel('OPQ-32-8-8'")
    bad = [dict(c) for c in tiny.tensors]; bad[2]['w2'] = bad[2]['w2'][:, :4]
    with pytest.raises(ValueError, match=r"channel 2 'w2' must be torch.int16 of shape \(8, 8\)"): ContextModel('OPQ-32-8-8', tiny.codec_identity, bad, tiny.exp_t)
    bad = [dict(c) for c in tiny.tensors]; bad[0]['b1'] = bad[0]['b1'].float()
    with pytest.raises(ValueError, match="channel 0 'b1' must be torch.int32"): ContextModel('OPQ-32-8-8', tiny.codec_identity, bad, tiny.exp_t)
    with pytest.raises(ValueError, match="'exp' must be int64"): ContextModel('OPQ-32-8-8', tiny.codec_identity, tiny.tensors, tiny.exp_t * 4)
    with pytest.raises(ValueError, match="6 channels"): ContextModel('OPQ-32-8-8', tiny.codec_identity, tiny.tensors[:5], tiny.exp_t)
    wide = [{k: torch.zeros((5000,) * (v.dim() if k != 'emb' and k != 'w3' else 1) if k in ('b1', 'b2', 'w2') else
             ((v.shape[0], 5000) if k in ('emb', 'w3') else v.shape), dtype=v.dtype) for k, v in c.items()} for c in tiny.tensors]
    with pytest.raises(ValueError, match="hidden width 5000 is outside"): ContextModel('OPQ-32-8-8', tiny.codec_identity, wide, tiny.exp_t)
    (tmp_path/'junk.safetensors').write_bytes(b'not a model')
    with pytest.raises(ValueError, match='is not a context model file'): load_context_model(tmp_path/'junk.safetensors')
    with pytest.raises(FileNotFoundError, match='no such file'): load_context_model(tmp_path/'missing.safetensors')
    with pytest.raises(ValueError, match="is not a context model file .*no 'mbldm.context_model' header"): load_context_model(load_codec('VQ-8-8-8').save(tmp_path/'c.safetensors'))

def test_exp_table_is_what_the_model_file_stores(tiny):
    assert np.array_equal(tiny.exp, exp_table()) and tiny.exp[0] == 2**32 and tiny.exp[-1] == 1 and (np.diff(tiny.exp) <= 0).all()

def test_shipped_model_behind_ec(opq):
    "OPQ-32-8-8 ships a learned model: `+ec` codes with it, the file is what the model estimates, and it beats `ctx`."
    cm = shipped_context_model(opq)
    assert cm is not None and cm.codec_identity == opq.identity and cm.recipe['made_by'] == 'mbldm run context_models'
    c = EntropyCodec('OPQ-32-8-8')
    assert c.model == LEARNED and EntropyCodec('OPQ-32-8-8', model='ctx').model == 'ctx'
    img = sample_image('chelsea')[:, :203, :290]
    data = compress(img, 'OPQ-32-8-8+ec')
    hd = read_header(data); o, n = hd.sections['ECOD']
    assert data[o] == 4 and data[o + 1:o + 1 + ID_BYTES].hex() == cm.identity[:16]
    z = opq.encode(img)[0].numpy()
    est = estimate_bits(z, 'OPQ-32-8-8', LEARNED, cmodel=cm) / 8 + _head(4, 6) + header_bytes('ec', 'OPQ-32-8-8')
    assert abs(len(data) - est) <= 0.01 * est, (len(data), est)
    assert torch.equal(decompress(data), decompress(compress(img, 'OPQ-32-8-8')))  # the fixed-rate codec's image, bit for bit
    assert estimate_bits(z, 'OPQ-32-8-8', LEARNED, cmodel=cm) < 0.95 * estimate_bits(z, 'OPQ-32-8-8', 'ctx')
    with pytest.raises(ValueError, match="which this mbldm does not have"): shipped_context_model(opq, 'deadbeefdeadbeef')
    from mbldm.codec import archived_codecs, pretrained_codecs
    assert all(shipped_context_model(load_codec(s)) is not None for s in pretrained_codecs())  # every shipped codec has one
    old = archived_codecs('OPQ-32-8-8')[0]  # a replaced codec: its identity has no model
    assert shipped_context_model(load_codec(old)) is None and EntropyCodec(old).model == 'ctx'
    with pytest.raises(ValueError, match="no learned context model ships for codec OPQ-32-8-8 c2bf94f0a6d9"): EntropyCodec(old, model=LEARNED)

def test_stream_of_an_unknown_model_is_a_clear_file_error(opq):
    "A file whose stream names a context model this mbldm does not have: one CodecFileError naming the model, no decode."
    img = sample_image('coffee')[:, :64, :96]
    hd = read_header(data := compress(img, 'OPQ-32-8-8+ec')); o, n = hd.sections['ECOD']
    sec = bytearray(data[o:o + n]); sec[1:1 + ID_BYTES] = bytes.fromhex('deadbeefdeadbeef')
    with pytest.raises(CodecFileError, match="x.mbl: .*learned context model deadbeefdeadbeef .*does not have"):
        decompress(pack('ec', hd.spec, hd.identity, hd.size, {'ECOD': bytes(sec)}), name='x.mbl')
