"""Latent datasets: index normalisation, folder encoding (skips, atomicity, resume) and the memory-mapped loader."""
import json, warnings
import numpy as np
import pytest
import torch

from mbldm.core import sample_image, write_png
from mbldm.codec import Codec
from mbldm.quantizers import Quantizer
from mbldm import latents
from mbldm.latents import (codes_to_unit, unit_to_codes, prepare_image, encode_folder, list_images,
                           LatentDataset, decode_latents, read_index, INDEX_FILE)

SIZE = 32  # -> latents (6, 4, 4)


@pytest.fixture(scope="module")
def codec(random_codec): return random_codec  # conftest.py: random OPQ-32-8-8 codebooks


@pytest.fixture(scope="module")
def images():
    "Small photos of different aspect ratios (short side 40), on the 8-bit grid so PNG files hold them exactly."
    def small(im): return (prepare_image(im, 40) if im.shape[1] == im.shape[2] else
                           torch.nn.functional.interpolate(im[None], scale_factor=40 / min(im.shape[1:]), mode='area')[0])
    return {n: (small(sample_image(n)) * 255).round() / 255 for n in ('astronaut', 'chelsea', 'coffee', 'rocket', 'camera')}


@pytest.fixture
def folder(tmp_path, images):
    d = tmp_path/"imgs"; (d/"sub").mkdir(parents=True)
    for i, (n, im) in enumerate(images.items()): write_png(im, d/("sub" if i == 4 else "")/f"{n}.png")
    (d/"bad.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (d/"notes.txt").write_text("not an image")
    return d


def encode(folder, out, codec, **kw):
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        encode_folder(folder, out, codec, size=SIZE, progress=False, **kw)
    return [str(x.message) for x in w]


def expected_codes(codec, images, names):
    return codec.encode(torch.stack([prepare_image(images[n], SIZE) for n in names]))


# --- normalisation -----------------------------------------------------------------------------------------------
def test_round_trip_all_codes():
    k = torch.arange(256)
    z = codes_to_unit(k)
    assert z.dtype == torch.float32 and z.min() == -1 and z.max() == 1
    assert torch.equal(unit_to_codes(z), k)
    assert unit_to_codes(z).dtype == torch.int64
    assert torch.equal(codes_to_unit(np.arange(256, dtype=np.uint8)), z)  # uint8 arrays straight from a shard


def test_clamping_and_rounding():
    z = torch.tensor([-5., -1.0001, -1., 1., 1.0001, 9.])
    assert unit_to_codes(z).tolist() == [0, 0, 0, 255, 255, 255]
    k = torch.arange(256)
    assert torch.equal(unit_to_codes(codes_to_unit(k) - 0.99 / 255), k)  # within half a step
    assert torch.equal(unit_to_codes(codes_to_unit(k[:16], K=16), K=16), k[:16])


def test_normalisation_errors():
    with pytest.raises(TypeError, match="integer"): codes_to_unit(torch.zeros(3))
    with pytest.raises(ValueError, match=r"\[0, 255\]"): codes_to_unit(torch.tensor([-1, 3]))
    with pytest.raises(TypeError, match="floats"): unit_to_codes(torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="NaN"): unit_to_codes(torch.tensor([0., float('nan')]))


def test_prepare_image(images):
    x = prepare_image(images['chelsea'], SIZE)  # 300x451 -> resize + crop
    assert x.shape == (3, SIZE, SIZE) and 0 <= x.min() and x.max() <= 1
    w = torch.rand(3, 40, 60)
    assert torch.equal(prepare_image(w, 40), w[:, :, 10:50])
    with pytest.raises(ValueError, match="multiple of 8"): prepare_image(w, 30)
    with pytest.raises(ValueError, match=r"\(3, H, W\)"): prepare_image(w[None], 32)


# --- encoding ----------------------------------------------------------------------------------------------------
def test_list_images(folder):
    assert list_images(folder) == ["astronaut.png", "bad.png", "chelsea.png", "coffee.png", "rocket.png", "sub/camera.png"]
    assert "sub/camera.png" not in list_images(folder, recursive=False)
    with pytest.raises(FileNotFoundError): list_images(folder/"nope")


def test_encode_skips_corrupt_and_matches_direct(folder, tmp_path, codec, images):
    out = tmp_path/"lat"
    msgs = encode(folder, out, codec, shard_size=4, batch=3)
    assert any("bad.png" in m for m in msgs)
    idx = read_index(out)
    names = ["astronaut", "chelsea", "coffee", "rocket", "camera"]
    assert idx['sources'] == [f"{n}.png" for n in names[:4]] + ["sub/camera.png"]
    assert [s['file'] for s in idx['skipped']] == ["bad.png"] and str(tmp_path) not in idx['skipped'][0]['error']
    assert [s['count'] for s in idx['shards']] == [3, 2] and idx['count'] == 5 and idx['n_files'] == 6
    assert idx['codec_identity'] == codec.identity and idx['codec_spec'] == "OPQ-32-8-8"
    ds = LatentDataset(out, normalize=False)
    want = expected_codes(codec, images, names)
    got = torch.stack([ds[i] for i in range(len(ds))])
    assert got.dtype == torch.int64 and torch.equal(got, want)
    assert isinstance(ds.maps[0], np.memmap)
    z = LatentDataset(out)[4]
    assert z.shape == (6, SIZE // 8, SIZE // 8) and z.dtype == torch.float32 and torch.equal(z, codes_to_unit(want[4]))
    assert torch.equal(LatentDataset(out)[-1], z)
    with pytest.raises(IndexError): ds[5]
    assert ds.source(4) == ("sub/camera.png", False)
    assert torch.equal(decode_latents(codes_to_unit(want), codec), codec.decode(want))


def test_uint8_on_disk(folder, tmp_path, codec):
    out = tmp_path/"lat"
    encode(folder, out, codec, shard_size=100)
    f = out/"shard-00000.npy"
    with open(f, "rb") as fh:
        np.lib.format.read_magic(fh); np.lib.format.read_array_header_1_0(fh); header = fh.tell()
    a = np.load(f, allow_pickle=False)
    h = SIZE // 8
    assert a.dtype == np.uint8 and a.shape == (5, 6, h, h)
    assert f.stat().st_size == header + 5 * 6 * h * h
    assert not list(out.glob(".*.tmp"))  # no leftovers of atomic writes


def test_augment_flip(folder, tmp_path, codec, images):
    out = tmp_path/"lat"
    encode(folder, out, codec, augment_flip=True)
    ds = LatentDataset(out, normalize=False)
    assert len(ds) == 10 and ds.index['augment_flip'] and ds.source(3) == ("chelsea.png", True)
    x = prepare_image(images['chelsea'], SIZE)
    assert torch.equal(ds[2], codec.encode(x)[0]) and torch.equal(ds[3], codec.encode(x.flip(-1))[0])


def test_index_written_last_and_resume(folder, tmp_path, codec, monkeypatch):
    out = tmp_path/"lat"
    encode(folder, out, codec, shard_size=2)
    assert (out/INDEX_FILE).is_file()
    calls = {'n': 0}
    real = latents._encode_batch
    def failing(*a):
        calls['n'] += 1
        if calls['n'] == 2: raise RuntimeError("power cut")
        return real(*a)
    monkeypatch.setattr(latents, "_encode_batch", failing)
    with pytest.raises(RuntimeError, match="power cut"): encode(folder, out, codec, shard_size=3, resume=False)
    assert not (out/INDEX_FILE).exists()  # the old index is gone, no new one: the folder reads as incomplete
    assert (out/"shard-00000.npy").is_file()
    with pytest.raises(FileNotFoundError, match="did not finish"): LatentDataset(out)
    # resume: shard 0 is reused, only shard 1 is encoded
    calls['n'] = 10
    encode(folder, out, codec, shard_size=3, batch=3)
    assert calls['n'] == 11
    assert len(LatentDataset(out)) == 5
    # a different codec invalidates the stored shards: both are encoded again, and the warnings say why
    other = Codec('OPQ-32-8-8', [codec.quantizers[0], codec.quantizers[2], codec.quantizers[1]])
    calls['n'] = 10
    w = encode(folder, out, other, shard_size=3, batch=3)
    assert calls['n'] == 12 and LatentDataset(out).identity == other.identity
    assert sum('made with different codec_identity: encoding it again' in m for m in w) == 2, w


def test_changed_image_under_the_same_name_is_reencoded(folder, tmp_path, codec, images):
    "Shards are reused by content, not by file name: an edited image re-encodes its shard (with a warning), only that one."
    out = tmp_path/"lat"
    encode(folder, out, codec, shard_size=3)
    idx0, calls, real = read_index(out), {'n': 0}, latents._encode_batch
    assert len(idx0['sources_sha256']) == 64
    write_png(images['astronaut'].flip(-1), folder/"astronaut.png")  # shard 0 holds astronaut, bad, chelsea
    def counting(*a): calls['n'] += 1; return real(*a)
    latents._encode_batch = counting
    try: w = encode(folder, out, codec, shard_size=3)
    finally: latents._encode_batch = real
    assert calls['n'] == 1, calls  # shard 0 only
    assert [m for m in w if 'encoding it again' in m] == [f"encode_folder: {out/'shard-00000.npy'} is made with different sha256: encoding it again"]
    ds = LatentDataset(out)
    assert torch.equal(ds.codes(0), codec.encode(prepare_image(images['astronaut'].flip(-1), SIZE))[0])
    assert ds.index['sources_sha256'] != idx0['sources_sha256'] and ds.index['sources'] == idx0['sources']
    assert not [m for m in encode(folder, out, codec, shard_size=3) if 'encoding it again' in m]  # nothing changed: all reused, silently


def test_encode_errors(tmp_path, codec):
    (tmp_path/"empty").mkdir()
    with pytest.raises(ValueError, match="no images"): encode_folder(tmp_path/"empty", tmp_path/"o", codec, progress=False)
    (tmp_path/"bad").mkdir(); (tmp_path/"bad"/"x.jpg").write_bytes(b"nope")
    with pytest.raises(ValueError, match="could be read"): encode(tmp_path/"bad", tmp_path/"o", codec)
    assert not (tmp_path/"o"/INDEX_FILE).exists()
    with pytest.raises(ValueError, match="multiple of 8"): encode_folder(tmp_path/"bad", tmp_path/"o", codec, size=30)


# --- loading errors ----------------------------------------------------------------------------------------------
@pytest.fixture
def encoded(folder, tmp_path, codec):
    out = tmp_path/"lat"
    encode(folder, out, codec, shard_size=3)
    return out


def edit_index(out, fn):
    idx = json.loads((out/INDEX_FILE).read_text()); fn(idx)
    (out/INDEX_FILE).write_text(json.dumps(idx))


def test_missing_index(tmp_path):
    with pytest.raises(FileNotFoundError, match="index.json"): LatentDataset(tmp_path)


def test_tampered_shard(encoded):
    np.save(encoded/"shard-00001.npy", np.zeros((3, 6, 4, 4), np.float32))
    with pytest.raises(ValueError, match="shard-00001.npy: dtype float32"): LatentDataset(encoded)
    np.save(encoded/"shard-00001.npy", np.zeros((2, 6, 4, 4), np.uint8))
    with pytest.raises(ValueError, match=r"shard-00001.npy: shape \(2, 6, 4, 4\), index.json says \(3, 6, 4, 4\)"): LatentDataset(encoded)
    (encoded/"shard-00001.npy").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="not a readable"): LatentDataset(encoded)
    np.save(encoded/"shard-00001.npy", np.array([{'a': 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="shard-00001.npy"): LatentDataset(encoded)  # pickled arrays are refused
    (encoded/"shard-00001.npy").unlink()
    with pytest.raises(FileNotFoundError, match="shard-00001.npy is missing"): LatentDataset(encoded)


def test_tampered_index(encoded):
    edit_index(encoded, lambda i: i.update(count=7))
    with pytest.raises(ValueError, match="add up to 5"): LatentDataset(encoded)
    edit_index(encoded, lambda i: i.update(count=5, shards=[{'file': '../x.npy', 'count': 5}]))
    with pytest.raises(ValueError, match="bad shard entry"): LatentDataset(encoded)
    edit_index(encoded, lambda i: i.pop('codec_spec'))
    with pytest.raises(ValueError, match="'codec_spec' missing"): LatentDataset(encoded)
    (encoded/INDEX_FILE).write_text("{ not json")
    with pytest.raises(ValueError, match="not valid JSON"): LatentDataset(encoded)


def test_codec_identity_check(encoded, codec):
    ds = LatentDataset(encoded)
    assert ds.codec(codec) is codec
    other = Codec('OPQ-32-8-8', [codec.quantizers[0], codec.quantizers[2], codec.quantizers[1]])
    with pytest.raises(ValueError, match="not the one that encoded"): ds.codec(other)


def test_codec_found_by_identity_in_the_archive(encoded, codec, tmp_path, monkeypatch):
    "Latents made with a codec that has since been replaced decode with the archived one, found by identity."
    from mbldm import codec as codec_module
    monkeypatch.setattr(codec_module, 'pretrained_dir', lambda: tmp_path)
    other = Codec('OPQ-32-8-8', [codec.quantizers[0], codec.quantizers[2], codec.quantizers[1]])
    other.save(tmp_path/'OPQ-32-8-8.safetensors')  # the shipped OPQ-32-8-8 is now another codec
    ds = LatentDataset(encoded)
    with pytest.raises(ValueError, match="not the one that encoded.*no OPQ-32-8-8 codec with identity"): ds.codec()
    (tmp_path/'archive').mkdir(); codec.save(tmp_path/'archive'/f'OPQ-32-8-8-{codec.identity[:12]}.safetensors')
    assert ds.codec().identity == codec.identity and ds.codec('OPQ-32-8-8').identity == codec.identity


def test_pickle_drops_maps(encoded):
    import pickle
    ds = LatentDataset(encoded); ds[0]
    ds2 = pickle.loads(pickle.dumps(ds))
    assert ds2._maps is None and torch.equal(ds2[4], ds[4])
