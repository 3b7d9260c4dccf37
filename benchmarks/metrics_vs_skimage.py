"""PSNR and SSIM of mbldm.metrics against scikit-image on real image pairs (not a test: it needs image files).

For every image in --data (default: the 24 Kodak images), the reconstruction is Pillow's JPEG at --quality.
mbldm computes on [0,1] float tensors with data_range=1.0 (the library's convention); scikit-image computes on the
uint8 arrays with data_range=255, Gaussian SSIM (sigma 1.5, population covariance: Wang et al.'s settings).
Also compared: SSIM on the BT.601 luma Y (mbldm channel='y' vs scikit-image on the same Y plane).
Prints one row per image and the maximum absolute differences.

    python benchmarks/metrics_vs_skimage.py --data /path/to/kodak --quality 30
"""
import argparse, io, sys, time
from pathlib import Path
import numpy as np
import torch
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from mbldm.metrics import psnr, ssim
from mbldm.color import rgb_to_ycbcr

EXTS = {'.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff', '.ppm'}

def jpeg(img8, q):
    buf = io.BytesIO(); Image.fromarray(img8).save(buf, format='JPEG', quality=q)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert('RGB')), buf.tell()

def to_t(a): return torch.tensor(a).permute(2, 0, 1).double() / 255

def sk_ssim(a, b, **kw):
    return structural_similarity(a, b, data_range=255, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, **kw)

def compare(img8, q):
    rec8, nbytes = jpeg(img8, q)
    x, y = to_t(img8), to_t(rec8)
    ya, yb = (rgb_to_ycbcr(255 * t)[0].numpy() for t in (x, y))
    return dict(bpp=8 * nbytes / (img8.shape[0] * img8.shape[1]),
                psnr=psnr(x, y, data_range=1.0).item(), psnr_sk=peak_signal_noise_ratio(img8, rec8, data_range=255),
                ssim=ssim(x, y, data_range=1.0).item(), ssim_sk=sk_ssim(img8, rec8, channel_axis=2),
                ssim_y=ssim(x, y, data_range=1.0, channel='y').item(), ssim_y_sk=sk_ssim(ya, yb))

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--data', type=Path, default=Path('/work/shared/data/kodak'), help='folder of RGB images')
    ap.add_argument('--quality', type=int, default=30, help='Pillow JPEG quality of the reconstructions')
    ap.add_argument('--tol', type=float, default=1e-3, help='fail (exit 1) if any |difference| exceeds this')
    a = ap.parse_args(argv)
    files = sorted(p for p in a.data.iterdir() if p.suffix.lower() in EXTS) if a.data.is_dir() else []
    if not files: sys.exit(f"no images found in {a.data}")
    t0, rows = time.time(), []
    print(f"{'image':<14}{'bpp':>7}{'psnr':>10}{'psnr_sk':>10}{'ssim':>9}{'ssim_sk':>9}{'ssim_y':>9}{'ssim_y_sk':>10}")
    for p in files:
        r = compare(np.asarray(Image.open(p).convert('RGB')), a.quality); rows.append(r)
        print(f"{p.name:<14}{r['bpp']:7.3f}{r['psnr']:10.4f}{r['psnr_sk']:10.4f}{r['ssim']:9.5f}{r['ssim_sk']:9.5f}{r['ssim_y']:9.5f}{r['ssim_y_sk']:10.5f}")
    diffs = {k: max(abs(r[k] - r[k + '_sk']) for r in rows) for k in ('psnr', 'ssim', 'ssim_y')}
    print(f"\n{len(rows)} images from {a.data}, Pillow JPEG q={a.quality}, {time.time() - t0:.1f} s")
    print(f"mean PSNR {np.mean([r['psnr'] for r in rows]):.4f} dB, mean SSIM {np.mean([r['ssim'] for r in rows]):.5f}, mean bpp {np.mean([r['bpp'] for r in rows]):.4f}")
    for k, v in diffs.items(): print(f"max |{k} - scikit-image| = {v:.3e}")
    ok = all(v <= a.tol for v in diffs.values())
    print('OK: all within' if ok else 'FAIL: exceeds', f"tolerance {a.tol:g}")
    return 0 if ok else 1

if __name__ == '__main__': sys.exit(main())
