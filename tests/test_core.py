"""mbldm.core: malformed image files, every Pillow mode read_image maps, EXIF orientation, atomic writes."""
import io, os, struct, time, zlib
import numpy as np, pytest, torch
from PIL import Image, ImageFile, ImageOps
from mbldm.core import (ImageError, MAX_PIXELS, read_image, write_png, atomic_write, to_uint8, sample_image,
                        SAMPLE_IMAGES, seed_everything, default_device, show_images)

RNG = np.random.default_rng(0)

def _rgb8(h=24, w=32): return RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)

def _png_bytes(im, **kw):
    b = io.BytesIO(); im.save(b, format='PNG', **kw); return b.getvalue()

def _jpeg_bytes(im, **kw):
    b = io.BytesIO(); im.save(b, format='JPEG', quality=95, **kw); return b.getvalue()

def _chunk(t, d): return struct.pack('>I', len(d)) + t + d + struct.pack('>I', zlib.crc32(t + d) & 0xffffffff)

def _paeth(a, b, c):
    p = a + b - c; pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    return np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))

def _png16(arr, ctype):
    "A 16-bit PNG written by hand (Pillow cannot write 16-bit colour), every row with a random filter type."
    h, w, c = arr.shape
    raw = arr.astype('>u2').view(np.uint8).reshape(h, w * c * 2).astype(int)
    bpp, prev, rows = 2 * c, np.zeros(w * c * 2, int), []
    for r in raw:
        left = np.concatenate([np.zeros(bpp, int), r[:-bpp]]); ul = np.concatenate([np.zeros(bpp, int), prev[:-bpp]])
        f = int(RNG.integers(0, 5))
        pred = [0 * r, left, prev, (left + prev) // 2, _paeth(left, prev, ul)][f]
        rows.append(bytes([f]) + ((r - pred) % 256).astype(np.uint8).tobytes()); prev = r
    return (b'\x89PNG\r\n\x1a\n' + _chunk(b'IHDR', struct.pack('>IIBBBBB', w, h, 16, ctype, 0, 0, 0))
            + _chunk(b'IDAT', zlib.compress(b''.join(rows))) + _chunk(b'IEND', b''))

def _with_size(png, w, h):
    "Patch the IHDR of a PNG to claim w x h pixels (with a correct CRC)."
    b = bytearray(png); b[16:24] = struct.pack('>II', w, h)
    b[29:33] = struct.pack('>I', zlib.crc32(bytes(b[12:29])) & 0xffffffff)
    return bytes(b)

# ---------------------------------------------------------------- malformed files
def _bad_files(d):
    png, jpg = _png_bytes(Image.fromarray(_rgb8(64, 64))), _jpeg_bytes(Image.fromarray(_rgb8(64, 64)))
    files = {'zero.png': b'', 'half.png': png[:len(png) // 2], 'half.jpg': jpg[:len(jpg) // 2],
             'text.png': b'hello, I am not an image\n' * 10, 'random.bin': RNG.integers(0, 256, 4096, dtype=np.uint8).tobytes(),
             'header_only.png': png[:33], 'garbled.png': png[:60] + bytes(len(png) - 60),
             'half16.png': (lambda b: b[:len(b) // 2])(_png16(RNG.integers(0, 65536, (32, 32, 3)).astype(np.uint16), 2))}
    for name, data in files.items(): (d/name).write_bytes(data)
    return list(files)

def test_malformed_files_raise_imageerror_naming_the_file(tmp_path):
    for name in _bad_files(tmp_path):
        with pytest.raises(ImageError, match=name.replace('.', r'\.')): read_image(tmp_path/name)
    assert not ImageFile.LOAD_TRUNCATED_IMAGES  # we never switch on Pillow's "fill truncated images with grey"

def test_messages_say_what_is_wrong(tmp_path):
    _bad_files(tmp_path)
    for name, words in [('zero.png', 'empty'), ('text.png', 'not an image'), ('half.jpg', 'truncated'),
                        ('half.png', 'truncated')]:
        with pytest.raises(ImageError, match=words): read_image(tmp_path/name)

def test_directory_and_missing(tmp_path):
    (tmp_path/'adir.png').mkdir()
    with pytest.raises(ImageError, match=r'adir\.png.*directory'): read_image(tmp_path/'adir.png')
    with pytest.raises(ImageError, match=r'nothere\.png.*no such file'): read_image(tmp_path/'nothere.png')
    assert issubclass(ImageError, ValueError)

@pytest.mark.parametrize("w,h,words", [(100_000, 100_000, 'too large'), (9000, 9000, 'over the limit')])
def test_huge_header_refused_fast(tmp_path, w, h, words):
    p = tmp_path/f'bomb{w}.png'
    p.write_bytes(_with_size(_png_bytes(Image.new('L', (8, 8))), w, h))
    assert struct.unpack('>II', p.read_bytes()[16:24]) == (w, h)  # the header really claims it
    t0 = time.perf_counter()
    with pytest.raises(ImageError, match=words) as e: read_image(p)
    assert time.perf_counter() - t0 < 2 and p.name in str(e.value)

def test_max_pixels_argument(tmp_path):
    write_png(torch.rand(3, 10, 10), tmp_path/'x.png')
    with pytest.raises(ImageError, match='over the limit'): read_image(tmp_path/'x.png', max_pixels=99)
    assert read_image(tmp_path/'x.png', max_pixels=100).shape == (3, 10, 10)
    assert MAX_PIXELS == 8192 * 8192

def test_bad_alpha_argument(tmp_path):
    with pytest.raises(ValueError, match="alpha"): read_image(tmp_path/'x.png', alpha='white')

# ---------------------------------------------------------------- modes
def _read(tmp_path, data, name='x.png', **kw):
    (tmp_path/name).write_bytes(data); return read_image(tmp_path/name, **kw)

def _check(x, h, w):
    assert x.dtype == torch.float32 and x.shape == (3, h, w) and x.is_contiguous()
    assert 0 <= x.min() and x.max() <= 1

def test_rgb8_exact(tmp_path):
    a = _rgb8(); x = _read(tmp_path, _png_bytes(Image.fromarray(a)))
    _check(x, 24, 32); assert torch.equal(x, torch.from_numpy(a).permute(2, 0, 1).float() / 255)

def test_grey16_keeps_precision(tmp_path):
    a = np.array([[0, 1, 32768, 65534, 65535]], dtype=np.uint16)
    x = _read(tmp_path, _png_bytes(Image.fromarray(a)))
    _check(x, 1, 5); assert torch.equal(x[0], x[1]) and torch.equal(x[0], x[2])
    assert x[0, 0, 4] == 1.0 and abs(x[0, 0, 2].item() - 0.50001) < 1e-5 and x[0, 0, 1] > 0  # 1/65535 survives
    assert x[0, 0, 3] < 1.0  # 65534 is not rounded to 8 bits

@pytest.mark.parametrize("ctype,c", [(2, 3), (6, 4)])
def test_colour16_png_exact(tmp_path, ctype, c):
    a = RNG.integers(0, 65536, (13, 17, c)).astype(np.uint16)
    a[0, 0] = [1] * c; a[0, 1] = [65535] * c
    x = _read(tmp_path, _png16(a, ctype), alpha='drop')
    _check(x, 13, 17)
    assert torch.equal(x, torch.from_numpy(a[..., :3].astype(np.float32) / 65535).permute(2, 0, 1))
    if c == 4:
        al = a[..., 3:].astype(np.float32) / 65535; rgb = a[..., :3].astype(np.float32) / 65535
        want = torch.from_numpy(rgb * al + (1 - al)).permute(2, 0, 1)
        torch.testing.assert_close(_read(tmp_path, _png16(a, ctype)), want, atol=1e-6, rtol=0)

def test_grey_and_one_bit(tmp_path):
    g = RNG.integers(0, 256, (9, 11), dtype=np.uint8)
    x = _read(tmp_path, _png_bytes(Image.fromarray(g)))
    _check(x, 9, 11); assert torch.equal(x[0], torch.from_numpy(g).float() / 255) and torch.equal(x[0], x[2])
    b = Image.fromarray(g > 128).convert('1')
    assert b.mode == '1'
    y = _read(tmp_path, _png_bytes(b), name='b.png')
    assert set(y.unique().tolist()) <= {0.0, 1.0} and torch.equal(y[1], torch.from_numpy(g > 128).float())

def test_int32_and_float_modes(tmp_path):
    i = Image.fromarray(np.array([[0, 65535, 70000]], dtype=np.int32), mode='I')
    (tmp_path/'i.tif').write_bytes(b'') ; i.save(tmp_path/'i.tif')
    torch.testing.assert_close(read_image(tmp_path/'i.tif')[0, 0], torch.tensor([0., 1., 1.]))
    f = Image.fromarray(np.array([[-0.5, 0.25, 2.0]], dtype=np.float32), mode='F'); f.save(tmp_path/'f.tif')
    torch.testing.assert_close(read_image(tmp_path/'f.tif')[0, 0], torch.tensor([0., 0.25, 1.]))

def test_palette_with_and_without_transparency(tmp_path):
    p = Image.new('P', (4, 2)); p.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    p.putpixel((1, 0), 1)
    x = _read(tmp_path, _png_bytes(p))
    torch.testing.assert_close(x[:, 0, 0], torch.tensor([1., 0, 0])); torch.testing.assert_close(x[:, 0, 1], torch.tensor([0., 0, 1]))
    p.info['transparency'] = 1  # index 1 (blue) is transparent
    y = _read(tmp_path, _png_bytes(p, transparency=1), name='t.png')
    torch.testing.assert_close(y[:, 0, 1], torch.ones(3))  # composited on white
    torch.testing.assert_close(y[:, 0, 0], torch.tensor([1., 0, 0]))
    z = read_image(tmp_path/'t.png', alpha='drop'); torch.testing.assert_close(z[:, 0, 1], torch.tensor([0., 0, 1]))

def test_rgba_and_la_both_alpha_modes(tmp_path):
    a = np.zeros((2, 3, 4), np.uint8); a[..., 0] = 200; a[..., 3] = [0, 51, 255]
    x = _read(tmp_path, _png_bytes(Image.fromarray(a, 'RGBA')))
    torch.testing.assert_close(x[0, 0], torch.tensor([1., 0.2 * 200 / 255 + 0.8, 200 / 255]))
    torch.testing.assert_close(x[1, 0], torch.tensor([1., 0.8, 0.]))
    d = read_image(tmp_path/'x.png', alpha='drop'); torch.testing.assert_close(d[0, 0], torch.full((3,), 200 / 255))
    la = Image.fromarray(a[..., [0, 3]], 'LA')
    y = _read(tmp_path, _png_bytes(la), name='la.png')
    torch.testing.assert_close(y[:, 0, 1], torch.full((3,), 0.2 * 200 / 255 + 0.8))
    torch.testing.assert_close(read_image(tmp_path/'la.png', alpha='drop')[:, 0, 0], torch.full((3,), 200 / 255))

def test_cmyk_jpeg(tmp_path):
    im = Image.new('CMYK', (16, 16), (0, 255, 0, 0))  # pure magenta ink
    x = _read(tmp_path, _jpeg_bytes(im), name='cmyk.jpg')
    _check(x, 16, 16); torch.testing.assert_close(x[:, 8, 8], torch.tensor([1., 0, 1]), atol=0.03, rtol=0)

def test_exif_orientation_6_rotates_jpeg(tmp_path):
    a = np.zeros((10, 20, 3), np.uint8); a[:3, :3] = 255  # white block at the top-left of the stored pixels
    ex = Image.Exif(); ex[0x0112] = 6
    x = _read(tmp_path, _jpeg_bytes(Image.fromarray(a), exif=ex.tobytes()), name='rot.jpg')
    _check(x, 20, 10)  # shown rotated 90 degrees clockwise: the block is now top-right
    assert x[:, :3, -3:].mean() > 0.9 and x[:, :3, :3].mean() < 0.1

@pytest.mark.parametrize("o", range(1, 9))
def test_all_orientations_match_pillow(tmp_path, o):
    a = _rgb8(5, 7); ex = Image.Exif(); ex[0x0112] = o
    x = _read(tmp_path, _png_bytes(Image.fromarray(a), exif=ex.tobytes()))
    want = np.asarray(ImageOps.exif_transpose(Image.open(tmp_path/'x.png')).convert('RGB'))
    assert torch.equal(x, torch.from_numpy(want.copy()).permute(2, 0, 1).float() / 255), o

# ---------------------------------------------------------------- writing
def test_write_read_roundtrip_and_inputs(tmp_path):
    x = torch.rand(3, 7, 9)
    y = read_image(write_png(x, tmp_path/'a.png'))
    assert (y - x).abs().max() <= 0.5 / 255 + 1e-6
    assert torch.equal(read_image(write_png(y, tmp_path/'b.png')), y)
    assert torch.equal(read_image(write_png(y.numpy()[1], tmp_path/'c.png'))[0], y[1])
    assert torch.equal(read_image(write_png(to_uint8(y).transpose(2, 0, 1), tmp_path/'d.png')), y)
    assert torch.equal(read_image(write_png(torch.tensor([[-1., 2.]]), tmp_path/'e.png'))[0, 0], torch.tensor([0., 1.]))
    with pytest.raises(ValueError, match='NaN'): write_png(torch.full((3, 2, 2), float('nan')), tmp_path/'f.png')
    with pytest.raises(ValueError, match=r'\(3,H,W\)'): write_png(torch.rand(2, 2, 2, 2), tmp_path/'f.png')
    with pytest.raises(ValueError, match='floats'): write_png(np.zeros((3, 2, 2), np.int64), tmp_path/'f.png')
    assert not (tmp_path/'f.png').exists()

def test_atomic_write_failure_keeps_old_file(tmp_path):
    p = tmp_path/'out.bin'
    with atomic_write(p) as f: f.write(b'old contents')
    with pytest.raises(RuntimeError):
        with atomic_write(p) as f:
            f.write(b'partial new'); f.flush(); raise RuntimeError('crash mid-write')
    assert p.read_bytes() == b'old contents' and os.listdir(tmp_path) == ['out.bin']
    with pytest.raises(RuntimeError):  # a brand-new file that fails is not created at all
        with atomic_write(tmp_path/'new.bin') as f: f.write(b'x'); raise RuntimeError
    assert os.listdir(tmp_path) == ['out.bin']

def test_write_png_failure_mid_save(tmp_path, monkeypatch):
    p = tmp_path/'img.png'; write_png(torch.zeros(3, 4, 4), p); old = p.read_bytes()
    def broken_save(self, fp, *a, **k): fp.write(b'\x89PNG half'); raise OSError('disk full')
    monkeypatch.setattr(Image.Image, 'save', broken_save)
    with pytest.raises(OSError, match='disk full'): write_png(torch.ones(3, 4, 4), p)
    assert p.read_bytes() == old and os.listdir(tmp_path) == ['img.png']

def test_atomic_write_text_and_permissions(tmp_path):
    with atomic_write(tmp_path/'t.txt', 'w', encoding='utf-8') as f: f.write('héllo')
    assert (tmp_path/'t.txt').read_text(encoding='utf-8') == 'héllo'
    (tmp_path/'ref').write_text('x')
    assert (tmp_path/'t.txt').stat().st_mode == (tmp_path/'ref').stat().st_mode  # umask applies, not 0600
    with pytest.raises(ValueError, match='write mode'): atomic_write(tmp_path/'t.txt', 'r').__enter__()

# ---------------------------------------------------------------- the rest
def test_sample_images_all_load():
    for n in SAMPLE_IMAGES:
        x = sample_image(n); assert x.dtype == torch.float32 and x.ndim == 3 and x.shape[0] == 3, n
        assert 0 <= x.min() and x.max() <= 1
    with pytest.raises(ValueError, match='choose from'): sample_image('lena')

def test_seed_and_device():
    seed_everything(3); a = (np.random.rand(), torch.randn(2))
    seed_everything(3); b = (np.random.rand(), torch.randn(2))
    assert a[0] == b[0] and torch.equal(a[1], b[1])
    assert isinstance(default_device(), torch.device)

def test_show_images_grid():
    import matplotlib; matplotlib.use('Agg'); import matplotlib.pyplot as plt
    fig = show_images(torch.rand(5, 3, 8, 8), titles=list('abcde'), ncols=3, size=1)
    assert len(fig.axes) == 6 and fig.axes[4].get_title() == 'e'
    fig2 = show_images([torch.rand(8, 8), torch.rand(1, 8, 8)])
    assert len(fig2.axes) == 2
    plt.close('all')

def test_every_figure_is_written_through_save_figure():
    "Experiments and the library write figures only through `core.save_figure` (atomic), never a bare savefig."
    import json, re
    from pathlib import Path
    root = Path(__file__).resolve().parent.parent
    bare = []
    for f in sorted((root/'mbldm'/'experiments').glob('*.ipynb')):
        for i, c in enumerate(json.loads(f.read_text())['cells']):
            if c['cell_type'] == 'code' and re.search(r'\.savefig\(', ''.join(c['source'])): bare.append(f"{f.name} cell {i}")
    for f in sorted((root/'mbldm').glob('*.py')):
        for n, line in enumerate(f.read_text().splitlines(), 1):
            if re.search(r'\.savefig\(', line) and not (f.name == 'core.py' and 'buf' in line): bare.append(f"{f.name}:{n}")
    assert not bare, f"bare savefig (use mbldm.core.save_figure): {bare}"
