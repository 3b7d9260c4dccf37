"""The .mbl container: exact sizes, and every damaged file is rejected with CodecFileError (never a crash or a hang)."""
import random, time, zlib, struct
import pytest, torch
from mbldm.core import sample_image
from mbldm.codec import fit_codec
from mbldm.container import compress, decompress, read_header, CodecFileError, MAGIC

@pytest.fixture(scope="module")
def codec():
    return fit_codec("PQ-16-8-8", [sample_image("coffee")[:, :200, :200]], n_train=5000, niter=3)

@pytest.fixture(scope="module")
def img():
    return sample_image("astronaut")[:, 100:140, 60:113]  # 40 x 53: not a multiple of 8

@pytest.fixture(scope="module")
def data(codec, img):
    return compress(img, codec)

def test_size_is_rate_plus_header(codec, img, data):
    hd = read_header(data)
    h, w = img.shape[-2:]
    assert (hd.height, hd.width, hd.spec) == (h, w, "PQ-16-8-8")
    assert len(data) == hd.offset + 4 * 5 * 7 + 4  # Cbar=4 codes per 8x8 patch of the padded 40x56 image, + CRC
    assert torch.equal(decompress(data, codec), codec.decode(codec.encode(img), size=(h, w))[0])

def test_ten_thousand_damaged_files_rejected(codec, data):
    rng = random.Random(0)
    t0, n = time.perf_counter(), 0
    for i in range(10_000):
        d = bytearray(data)
        op = i % 4
        if op == 0:  # flip 1-3 bytes
            for _ in range(rng.randint(1, 3)):
                j = rng.randrange(len(d)); d[j] ^= rng.randint(1, 255)
        elif op == 1: d = d[:rng.randrange(len(d))]  # truncate
        elif op == 2: d[rng.randrange(len(d)):rng.randrange(len(d)) + 1] = bytes(rng.randint(1, 8))  # splice
        else: d += bytes([rng.randrange(256)]) * rng.randint(1, 16)  # trailing junk
        if bytes(d) == data: continue
        with pytest.raises(CodecFileError): decompress(bytes(d), codec)
        n += 1
    assert n > 9_900
    assert time.perf_counter() - t0 < 60

def test_huge_size_in_header_is_refused_before_allocating(data):
    n = data[5]
    d = bytearray(data)
    struct.pack_into("<II", d, 6 + n + 16, 2**31, 2**31)
    body = bytes(d[:-4]); d[-4:] = struct.pack("<I", zlib.crc32(body))  # a consistent CRC: only the size is wrong
    with pytest.raises(CodecFileError, match="too large"): read_header(bytes(d))

def test_wrong_codec_and_version(codec, data, img):
    other = fit_codec("PQ-16-8-8", [sample_image("chelsea")[:, :200, :200]], n_train=5000, niter=3)
    with pytest.raises(CodecFileError, match="pass the codec file"): decompress(data, other)
    d = bytearray(data); d[4] = 9
    with pytest.raises(CodecFileError, match="version 9"): decompress(bytes(d), codec)
    with pytest.raises(CodecFileError, match="bad magic"): decompress(b"JUNK" + data[4:], codec)

def test_shipped_codec_missing_is_clear(codec, img):
    d = compress(img, codec)
    with pytest.raises(CodecFileError, match="PQ-16-8-8"): decompress(d)  # no shipped PQ-16-8-8
