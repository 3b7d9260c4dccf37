"""Codec decoding: hard and soft decoding agree bit for bit on one-hot probabilities, and soft decoding's gradient is right."""
import pytest, torch
import torch.nn.functional as F
from mbldm.codec import Codec, load_codec, pretrained_codecs
from mbldm.quantizers import Quantizer, K

def one_hot(codes): return F.one_hot(codes, K).permute(0, 1, 4, 2, 3).float()

def _random_rq(seed=0):
    "An RQ-16-8-8 codec with random codebooks: its Y codeword is a sum of two stages."
    g = torch.Generator().manual_seed(seed)
    def q(kind, m, dsub): return Quantizer.from_state_dict(
        {'codebooks': torch.randn(m, K, dsub, generator=g) * 60 + 128 / m, 'rotation': torch.eye(64)}, {'kind': kind, 'm': m, 'd': 64})
    return Codec('RQ-16-8-8', [q('RQ', 2, 64), q('VQ', 1, 64), q('VQ', 1, 64)])

@pytest.mark.parametrize('shape', [(1, 1, 1), (2, 5, 7), (3, 4, 4)])
def test_onehot_soft_decoding_is_hard_decoding_unclamped(random_codec, shape):
    b, h, w = shape
    for codec in (random_codec, _random_rq()):
        z = torch.randint(0, K, (b, codec.cbar, h, w), generator=torch.Generator().manual_seed(h * w))
        soft, hard = codec.decode_soft(one_hot(z)), codec.decode(z, clamp=False)
        assert torch.equal(soft, hard), (soft - hard).abs().max()
        assert soft.min() < 0 or soft.max() > 1  # random codebooks leave [0,1]: the unclamped decoding is tested
        assert torch.equal(codec.decode(z), hard.clamp(0, 1))  # the default still clamps
        size = (8 * h - 3, 8 * w - 1)
        assert torch.equal(codec.decode_soft(one_hot(z), size=size), codec.decode(z, size=size, clamp=False))

@pytest.mark.parametrize('spec', pretrained_codecs())
def test_onehot_soft_decoding_shipped_codecs(spec):
    codec = load_codec(spec)
    z = torch.randint(0, K, (2, codec.cbar, 6, 5), generator=torch.Generator().manual_seed(1))
    assert torch.equal(codec.decode_soft(one_hot(z)), codec.decode(z, clamp=False))
    assert torch.equal(codec.decode_soft(one_hot(z), size=(41, 33)), codec.decode(z, size=(41, 33), clamp=False))

def test_soft_decoding_of_a_mixture_is_the_mixture_of_decodings(random_codec):
    "Linearity: decode_soft(a*onehot(z1) + (1-a)*onehot(z2)) = a*decode(z1) + (1-a)*decode(z2)."
    g = torch.Generator().manual_seed(2)
    z1, z2 = (torch.randint(0, K, (1, 6, 3, 3), generator=g) for _ in range(2))
    mix = 0.3 * one_hot(z1) + 0.7 * one_hot(z2)
    want = 0.3 * random_codec.decode(z1, clamp=False) + 0.7 * random_codec.decode(z2, clamp=False)
    torch.testing.assert_close(random_codec.decode_soft(mix), want, rtol=1e-5, atol=1e-4)

def test_decode_soft_gradcheck(random_codec):
    "float64 finite differences against autograd, on one 8x8 patch (OPQ: concatenation + rotation; RQ: stage sum)."
    for codec in (random_codec, _random_rq()):
        p = torch.rand(1, codec.cbar, K, 1, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
        p = (p / p.sum(2, keepdim=True)).requires_grad_()
        assert torch.autograd.gradcheck(lambda q: codec.decode_soft(q, size=(7, 6)), (p,), eps=1e-6, atol=1e-6)

def test_ordering_pairs():
    from mbldm.codec import ordering_pairs
    t1 = ['VQ-8-8-8', 'PQ-32-8-8', 'OPQ-32-8-8', 'RQ-32-8-8']
    assert ordering_pairs(t1) == [('VQ-8-8-8', 'PQ-32-8-8', True), ('VQ-8-8-8', 'OPQ-32-8-8', True), ('VQ-8-8-8', 'RQ-32-8-8', True),
                                  ('PQ-32-8-8', 'OPQ-32-8-8', False), ('PQ-32-8-8', 'RQ-32-8-8', False), ('OPQ-32-8-8', 'RQ-32-8-8', False)]
    assert ordering_pairs(['RQ-32-8-8', 'OPQ-32-8-8']) == [('OPQ-32-8-8', 'RQ-32-8-8', False)]  # order of specs does not matter
    assert ordering_pairs(['opq-32-8-8', 'RQ-32-8-8']) == [('opq-32-8-8', 'RQ-32-8-8', False)]  # names come back as given
    assert ordering_pairs(['PQ-16-8-8', 'RQ-32-8-8', 'OPQ-64-16-16']) == []  # no two at the same bits, no VQ
    assert ordering_pairs(['VQ-8-8-8']) == [] and ordering_pairs([]) == []
    with pytest.raises(ValueError, match='KIND-Y-Cb-Cr'): ordering_pairs(['JPEG-75'])


# codecs by identity: the current shipped file first, then the archive, and never a codec with another identity
from mbldm import codec as codec_module
from mbldm.codec import archived_codecs

EARLIER = {  # tests/data/legacy-codec/README.md: the codecs shipped up to commit 00c1643
    'OPQ-32-8-8': 'c2bf94f0a6d96cc9679d30e3f78d1ca7153a2f6550baec5b1c784c0db6d861b3',
    'PQ-32-8-8': '0c3d5eddffd508b496548a14da3a6a82f9f93d247b255e4e1108f74ca19424da',
    'RQ-32-8-8': '3479fdd7f9715583363434eb7879377bd4ef8171d97a2bc9bef69851d98f9653',
    'VQ-8-8-8': 'c30e4a006cce5ed1347c4a70a1294db0be521735991845c6498c6ad21bb63f30'}

def _other(codec, seed=1):
    "The same spec with different Y codebooks: another identity."
    q = codec.quantizers[0]
    cb = q.codebooks + torch.randn(q.codebooks.shape, generator=torch.Generator().manual_seed(seed))
    return Codec(codec.spec, [Quantizer.from_state_dict({'codebooks': cb, 'rotation': q.rotation}, q.meta)] + codec.quantizers[1:])

def test_load_codec_by_identity(random_codec, tmp_path, monkeypatch):
    monkeypatch.setattr(codec_module, 'pretrained_dir', lambda: tmp_path)
    new, old, spec = random_codec, _other(random_codec), 'OPQ-32-8-8'
    new.save(tmp_path/f'{spec}.safetensors')
    (tmp_path/'archive').mkdir(); old.save(tmp_path/'archive'/f'{spec}-{old.identity[:12]}.safetensors')
    assert load_codec(spec).identity == new.identity  # no identity: the current one
    for c in (new, old):
        assert load_codec(spec, identity=c.identity).identity == c.identity
        assert load_codec(spec, identity=bytes.fromhex(c.identity)[:16]).identity == c.identity  # what a .mbl file stores
    assert [p.name for p in archived_codecs(spec)] == [f'{spec}-{old.identity[:12]}.safetensors']
    with pytest.raises(ValueError, match='does not have identity'): load_codec(new, identity=old.identity)
    with pytest.raises(ValueError, match='does not have identity'): load_codec(tmp_path/f'{spec}.safetensors', identity=old.identity)
    with pytest.raises(ValueError, match='32..64 hex digits'): load_codec(spec, identity=old.identity[:12])
    # a file whose name claims an identity its tensors do not have is never returned
    third = _other(random_codec, seed=2)
    (tmp_path/'archive'/f'{spec}-{old.identity[:12]}.safetensors').rename(tmp_path/'archive'/f'{spec}-{third.identity[:12]}.safetensors')
    with pytest.raises(ValueError, match=f'no {spec} codec with identity {third.identity[:12]}.*{old.identity[:12]}'):
        load_codec(spec, identity=third.identity)
    with pytest.raises(ValueError, match=f'no {spec} codec with identity {old.identity[:12]}'):
        load_codec(spec, identity=old.identity)  # its file is there, under another name: only names that match are opened

@pytest.mark.parametrize('spec', sorted(EARLIER))
def test_earlier_shipped_codecs_resolve_by_identity(spec):
    assert load_codec(spec, identity=EARLIER[spec]).identity == EARLIER[spec]
    assert load_codec(spec, identity=EARLIER[spec][:32]).identity == EARLIER[spec]
    for f in archived_codecs(spec):  # every archived file is named by its own identity
        assert load_codec(f).identity.startswith(f.stem[len(spec) + 1:])

@pytest.mark.parametrize('spec', pretrained_codecs())
def test_shipped_codecs_record_their_recipe(spec):
    r = load_codec(spec).recipe
    for k in ('data', 'n_train', 'seed', 'niter', 'opq_niter', 'beam_size', 'flip', 'pca', 'mbldm_version', 'mbldm_commit'):
        assert r.get(k) is not None, f"{spec}: recipe lacks {k}: {r}"
    assert r['data'].startswith('McM') and r['n_train'] >= 100_000
    if spec.startswith('OPQ'): assert r['opq_init'] == 'eigen' == load_codec(spec).quantizers[0].meta['opq_init']

def test_retrained_opq_beats_the_one_it_replaced_on_a_held_out_photo():
    "The McM-trained codecs never saw scikit-image's astronaut; eigenvalue-allocation OPQ gains well over 0.1 dB there."
    from mbldm.core import sample_image
    from mbldm.metrics import psnr
    x = sample_image('astronaut')
    new, old = load_codec('OPQ-32-8-8'), load_codec('OPQ-32-8-8', identity=EARLIER['OPQ-32-8-8'])
    p = {n: psnr(x, c.decode(c.encode(x), size=x.shape[-2:])[0], data_range=1.).item() for n, c in (('new', new), ('old', old))}
    assert p['new'] > p['old'] + 0.1, p
