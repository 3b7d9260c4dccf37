"""Entropy-coded index maps (mbldm.entropy): bit-exact round trips, sizes against the model's estimate, the `SPEC+ec`
base codec through the container and the CLI, and damaged streams refused cleanly."""
import time
import numpy as np, pytest, torch
from mbldm.core import sample_image, write_png
from mbldm.codec import load_codec
from mbldm.basecodecs import base_codec, ModelCodec
from mbldm.container import compress, decompress, read_header, pack, header_bytes, CodecFileError
from mbldm.entropy import (MODELS, EntropyCodec, encode_indices, decode_indices, estimate_bits, channel_plan, ctx_flags, med, _head)

RNG = np.random.default_rng(0)

def _maps(spec_cbar):
    "Index maps of every awkward kind: random, all equal (0 and 255), every value once per channel, tiny shapes."
    c = spec_cbar
    return {'random': RNG.integers(0, 256, (c, 13, 21)), 'zeros': np.zeros((c, 9, 7), int), 'all255': np.full((c, 5, 11), 255),
            'every_value': np.stack([RNG.permutation(256).reshape(16, 16) for _ in range(c)]),
            'one_patch': RNG.integers(0, 256, (c, 1, 1)), 'one_row': RNG.integers(0, 256, (c, 1, 40)),
            'one_column': RNG.integers(0, 256, (c, 33, 1)), 'ramps': (np.arange(c * 20 * 30).reshape(c, 20, 30) * 7) % 256}

@pytest.mark.parametrize('spec,cbar', [('OPQ-32-8-8', 6), ('RQ-64-16-16', 12), ('VQ-8-8-8', 3)])
@pytest.mark.parametrize('model', MODELS)
def test_roundtrip_bit_exact_on_awkward_maps(spec, cbar, model):
    for name, z in _maps(cbar).items():
        s = encode_indices(z, spec, model)
        back = decode_indices(s, spec, z.shape)
        assert back.dtype == np.uint8 and np.array_equal(back, z), (name, model)
        assert 8 * len(s) <= estimate_bits(z, spec, model) + 8 * _head(s[0], cbar) + 64, name  # the range coder spends what the model says

def test_med_is_jpeg_ls():
    a, b, c = np.array([5, 9, 5, 0]), np.array([9, 5, 7, 255]), np.array([9, 3, 6, 255])
    assert med(a, b, c).tolist() == [5, 9, 6, 0]
    assert channel_plan('RQ-32-8-8')[1] == (False, False, 0, 'v') and channel_plan('OPQ-32-8-8')[1] == (True, True, 0, 'r')

def _shipped():
    from mbldm.codec import archive_dir
    return ['OPQ-32-8-8', 'PQ-32-8-8', 'RQ-32-8-8', 'VQ-8-8-8', sorted(archive_dir().glob('OPQ-32-8-8-*.safetensors'))[0]]

@pytest.mark.parametrize('which', _shipped(), ids=lambda w: getattr(w, 'stem', w))
def test_real_image_models_and_sizes(which):
    "On a photo, for every shipped codec (and the archived OPQ): each model round-trips, costs what it estimates, and `ctx` is the cheapest."
    codec = load_codec(which)
    z = codec.encode(sample_image('coffee'))[0]
    got = {}
    for m in MODELS:
        s = encode_indices(z, codec.spec, m)
        assert np.array_equal(decode_indices(s, codec.spec, tuple(z.shape)), z.numpy())
        est = estimate_bits(z, codec.spec, m)
        assert abs(8 * (len(s) - _head(s[0], codec.spec.cbar)) - est) <= 0.01 * est + 32, (m, len(s), est)
        got[m] = 8 * len(s) / z.numel()
    assert got['ctx'] <= min(got['order0'], got['med']) + 8 / z.numel() and got['ctx'] < 7, got  # within the flag byte

def test_ctx_flags_are_the_cheaper_coding_per_channel():
    "The encoder's flags: flipping any one costs bits, the forced pure models cost more, and a forced stream still round-trips."
    codec = load_codec('OPQ-32-8-8')
    z = codec.encode(sample_image('coffee'))[0]
    fl, best = ctx_flags(z, codec.spec), estimate_bits(z, codec.spec)
    assert 0 < sum(fl) < 6, fl  # eigenvalue-allocated OPQ: the DC sub-code is predicted, the others not
    assert abs(estimate_bits(z, codec.spec, 'ctx', fl) - best) < 1e-6 * best
    for i in range(6):
        other = list(fl); other[i] = 1 - other[i]
        assert estimate_bits(z, codec.spec, 'ctx', other) > best, i
    for f in (0, 1):
        s = encode_indices(z, codec.spec, 'ctx', [f] * 6)
        assert s[:2] == bytes([3, 0x3f * f]) and np.array_equal(decode_indices(s, codec.spec, tuple(z.shape)), z.numpy())
        assert len(s) > len(encode_indices(z, codec.spec)) + 16, f
    with pytest.raises(ValueError, match="flags are one 0 or 1 per latent channel"): encode_indices(z, codec.spec, 'ctx', [1] * 5)
    with pytest.raises(ValueError, match="flags are one 0 or 1 per latent channel"): encode_indices(z, codec.spec, 'med', [1] * 6)

def test_streams_before_the_flag_field_still_decode():
    "Model byte 2 is the `ctx` stream of the previous format (no flag field, every channel predicted): the all-0 stream's payload."
    z = load_codec('OPQ-32-8-8').encode(sample_image('coffee')[:, :96, :128])[0].numpy()
    s = encode_indices(z, 'OPQ-32-8-8', 'ctx', [0] * 6)
    assert np.array_equal(decode_indices(bytes([2]) + s[2:], 'OPQ-32-8-8', z.shape), z)
    with pytest.raises(ValueError, match="expected 5 \\+ a multiple of 4"): decode_indices(bytes([2]) + s[1:], 'OPQ-32-8-8', z.shape)

def test_container_file_size_and_identity(tmp_path):
    img = sample_image('chelsea')[:, :203, :290]  # not a multiple of 8
    codec = load_codec('OPQ-32-8-8')
    data = compress(img, 'OPQ-32-8-8+ec')
    hd = read_header(data)
    assert (hd.kind, hd.spec, list(hd.sections)) == ('ec', 'OPQ-32-8-8', ['ECOD'])
    ec = EntropyCodec('OPQ-32-8-8')  # 'learned' where a context model ships for the codec, else 'ctx'
    o, n = hd.sections['ECOD']; assert data[o] == {'ctx': 3, 'learned': 4}[ec.model]
    est = estimate_bits(codec.encode(img)[0], codec.spec, ec.model, cmodel=ec.cmodel) / 8 + _head(data[o], 6) + header_bytes('ec', 'OPQ-32-8-8')
    assert abs(len(data) - est) <= 0.01 * est, (len(data), est)
    assert torch.equal(decompress(data), decompress(compress(img, 'OPQ-32-8-8')))  # the fixed-rate codec's image, bit for bit
    assert len(data) < 0.8 * len(compress(img, 'OPQ-32-8-8'))

def test_spellings(tmp_path):
    c, rate = base_codec('OPQ-32-8-8+ec')
    assert isinstance(c, EntropyCodec) and c.spec() == 'OPQ-32-8-8' and rate == 0.75 and repr(c) == "EntropyCodec('OPQ-32-8-8')"
    assert base_codec('ec:RQ-32-8-8')[0].identity == ModelCodec('RQ-32-8-8').identity
    f = load_codec('VQ-8-8-8').save(tmp_path/'my codec.safetensors')
    assert base_codec(f'{f}+ec')[0].identity == ModelCodec(f).identity  # a codec file works too
    with pytest.raises(ValueError, match="no shipped codec RQ-40-8-8"): base_codec("RQ-40-8-8+ec")
    with pytest.raises(ValueError, match="codec spec"): base_codec('OPQ-32-8-8+xx')
    with pytest.raises(ValueError, match="'cabac' is not one of"): EntropyCodec('OPQ-32-8-8', model='cabac')

def test_cli_compress_decompress(tmp_path):
    from mbldm.cli import main
    img = sample_image('astronaut')[:, :120, :168]
    write_png(img, tmp_path/'a.png')
    assert main(['compress', str(tmp_path/'a.png'), '--codec', 'OPQ-32-8-8+ec', '-o', str(tmp_path/'a.mbl')]) == 0
    assert read_header((tmp_path/'a.mbl').read_bytes()).kind == 'ec'
    assert main(['decompress', str(tmp_path/'a.mbl'), '-o', str(tmp_path/'b.png')]) == 0
    assert (tmp_path/'b.png').stat().st_size > 0
    f = str(load_codec('VQ-8-8-8').save(tmp_path/'mine.safetensors'))  # a codec file that does not ship: spelled FILE+ec
    assert main(['compress', str(tmp_path/'a.png'), '--codec', f + '+ec', '-o', str(tmp_path/'c.mbl')]) == 0
    assert main(['decompress', str(tmp_path/'c.mbl'), '-o', str(tmp_path/'c.png'), '--codec', f + '+ec']) == 0
    assert main(['decompress', str(tmp_path/'c.mbl'), '-o', str(tmp_path/'d.png'), '--codec', f]) == 2  # the fixed-rate codec cannot read it

def test_bad_maps_rejected():
    z = np.zeros((6, 4, 4), int)
    with pytest.raises(ValueError, match=r"\(6, h, w\)"): encode_indices(z[:5], 'OPQ-32-8-8')
    with pytest.raises(ValueError, match="0..255"): encode_indices(z + 256, 'OPQ-32-8-8')
    with pytest.raises(TypeError, match="integers"): encode_indices(z.astype(float), 'OPQ-32-8-8')
    with pytest.raises(ValueError, match=r"\(6, h, w\)"): decode_indices(encode_indices(z, 'OPQ-32-8-8'), 'OPQ-32-8-8', (3, 4, 4))

def _section(data):
    hd = read_header(data); o, n = hd.sections['ECOD']
    return hd, bytes(data[o:o + n])

def test_damaged_streams_rejected_cleanly():
    "Byte flips and truncations of the stream, in files with a valid container CRC: CodecFileError, quickly, never a crash."
    img = sample_image('rocket')[:, :160, :240]
    data = compress(img, 'OPQ-32-8-8+ec')
    hd, sec = _section(data)
    r = np.random.default_rng(1)
    cases = []
    for _ in range(40):
        b = bytearray(sec); k = int(r.integers(0, len(b))); b[k] ^= int(r.integers(1, 256)); cases.append(bytes(b))
    cases += [sec[:n] for n in (0, 1, 4, 5, 6, 9, len(sec) - 4, len(sec) - 1)] + [sec + bytes(8), bytes([7]) + sec[1:]]
    cases += [sec[:1] + bytes([sec[1] ^ (1 << k)]) + sec[2:] for k in range(8)]  # every bit of the flag field
    cases += [bytes([b]) + sec[1:] for b in (0, 1, 2)] + [bytes([2]) + sec[2:]]  # another model byte
    for bad in cases:
        forged = pack('ec', hd.spec, hd.identity, hd.size, {'ECOD': bad})
        t0 = time.perf_counter()
        with pytest.raises(CodecFileError, match='x.mbl: '): decompress(forged, name='x.mbl')
        assert time.perf_counter() - t0 < 5
    # one spare word after the stream: the range decoder never reads it, so the file decodes to exactly the original
    assert torch.equal(decompress(pack('ec', hd.spec, hd.identity, hd.size, {'ECOD': sec + bytes(4)})), decompress(data))
    flipped = bytearray(data); flipped[len(data) // 2] ^= 4  # without re-packing: the container's CRC
    with pytest.raises(CodecFileError, match='checksum'): decompress(bytes(flipped))

def test_huge_claim_refused_before_decoding():
    "A header claiming an 8192 x 8192 image with a few bytes of stream is refused at once (no 6M-code decode loop)."
    hd, sec = _section(compress(sample_image('coffee')[:, :64, :64], 'OPQ-32-8-8+ec'))
    forged = pack('ec', hd.spec, hd.identity, (8192, 8192), {'ECOD': sec})
    t0 = time.perf_counter()
    with pytest.raises(CodecFileError, match='cannot hold'): decompress(forged)
    assert time.perf_counter() - t0 < 2

def test_ec_file_of_an_archived_codec_decodes_without_naming_it():
    "A +ec file written with a since-replaced (archived) codec is decoded by that codec, as an entropy-coded file."
    from mbldm.codec import archive_dir, load_codec
    from mbldm.container import compress, decompress
    from mbldm.core import sample_image
    old = sorted(archive_dir().glob('OPQ-32-8-8-*.safetensors'))[0]
    x = sample_image('coffee')[:, :64, :96]
    data = compress(x, f'{old}+ec')
    y = decompress(data)
    c_old, c_new = load_codec(old), load_codec('OPQ-32-8-8')
    assert c_old.identity != c_new.identity
    assert torch.equal(y, c_old.decode(c_old.encode(x[None]), size=(64, 96))[0])
    assert not torch.equal(y, c_new.decode(c_new.encode(x[None]), size=(64, 96))[0])
