"""Speed of mbldm's learned codecs, measured in one run beside the obvious alternative.

* Ballé hyperprior files (`hyperprior:CKPT`, default the shipped `tiny`): encode and decode throughput in
  megapixels per second through the container (network + range coder + packing + CRC), against Pillow JPEG
  (`jpeg:Q` through the same container), on the same images, timed *interleaved* (hyperprior, JPEG, hyperprior,
  ...) so that load from other processes on a shared machine hits both alike. torch runs with `--threads`
  threads (default 2); Pillow's JPEG codec is single-threaded.
* CDC files (`cdc:CKPT`, default the shipped `tiny`): seconds to decode one image against the number of DDIM
  steps S (each step is one U-Net call), with the encode time (compressor + range coder) for reference.

    python benchmarks/learned_codecs_speed.py [--images DIR] [--n 4] [--crop 256] [--threads 2] [--reps 3]
        [--hyperprior tiny] [--cdc tiny] [--steps 1 5 17 65] [--out learned_codecs_speed.json]
"""
import argparse, json, platform, statistics, sys, time
from pathlib import Path
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a clone without installing

from mbldm.core import read_image
from mbldm.latents import list_images
from mbldm.container import compress, decompress
from mbldm.hyperprior import HyperpriorCodec
from mbldm.cdc import CdcCodec


def centre(x, s):
    "Centre crop of side `s` (0: the whole image)."
    if not s: return x
    h, w = x.shape[-2:]; s = min(s, h, w)
    return x[:, (h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]


def timed(fn, items):
    "(seconds, outputs) of fn over items."
    t0 = time.perf_counter(); out = [fn(x) for x in items]
    return time.perf_counter() - t0, out


def throughput(images, codecs, reps):
    "Median encode/decode MP/s of each codec spec, the codecs timed interleaved within every repetition."
    mp = sum(x[0].numel() for x in images) / 1e6
    t = {name: {'encode': [], 'decode': []} for name in codecs}
    files = {}
    for _ in range(reps):
        for name, c in codecs.items():
            s, files[name] = timed(lambda x: compress(x, c), images); t[name]['encode'].append(s)
            s, _ = timed(lambda f: decompress(f, c), files[name]); t[name]['decode'].append(s)
    bpp = {n: 8 * sum(len(f) for f in files[n]) / (mp * 1e6) for n in codecs}
    return {n: {'encode_mps': mp / statistics.median(v['encode']), 'decode_mps': mp / statistics.median(v['decode']),
                'bpp_file': bpp[n], 'seconds': v} for n, v in t.items()}


def cdc_steps(x, ckpt, steps, reps):
    "Encode seconds and decode seconds per image for each number of DDIM steps (gamma 0.8, median of reps)."
    codec = CdcCodec(ckpt, gamma=0.8)
    enc, data = timed(lambda _: compress(x, codec), range(reps)); enc, data = enc / reps, data[0]
    dec = {}
    for s in steps:
        codec.steps = s
        dec[str(s)] = statistics.median(timed(lambda _: decompress(data, codec), [0])[0] for _ in range(reps))
    return {'encode_s': enc, 'decode_s': dec, 'size': list(x.shape[-2:]), 'bpp_file': 8 * len(data) / x[0].numel()}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--images', default=str(Path(__file__).resolve().parents[2]/'shared'/'data'/'kodak'), help='folder of test images (default ../shared/data/kodak)')
    p.add_argument('--n', type=int, default=4, help='number of images (first n)')
    p.add_argument('--crop', type=int, default=0, help='centre crop for the throughput test (0: whole images)')
    p.add_argument('--cdc-crop', type=int, default=256, help='centre crop of the CDC decode-time image')
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--reps', type=int, default=3)
    p.add_argument('--hyperprior', default='tiny'); p.add_argument('--cdc', default='tiny')
    p.add_argument('--jpeg', type=int, default=75, help='Pillow JPEG quality')
    p.add_argument('--steps', type=int, nargs='+', default=[1, 5, 17, 65])
    p.add_argument('--out', default='learned_codecs_speed.json')
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    folder = Path(a.images)
    images = [centre(read_image(folder/f), a.crop) for f in list_images(folder)[:a.n]]
    if not images: raise SystemExit(f"no images in {folder}")
    codecs = {f'hyperprior:{a.hyperprior}': HyperpriorCodec(a.hyperprior), f'jpeg:{a.jpeg}': f'jpeg:{a.jpeg}'}
    res = dict(threads=a.threads, torch=torch.__version__, machine=platform.processor() or platform.machine(),
               images=f"{len(images)} from {folder}, {tuple(images[0].shape[-2:])}" + (f" (centre {a.crop})" if a.crop else ''),
               throughput=throughput(images, codecs, a.reps),
               cdc=cdc_steps(centre(images[0], a.cdc_crop), a.cdc, a.steps, a.reps))
    Path(a.out).write_text(json.dumps(res, indent=1))
    for n, r in res['throughput'].items():
        print(f"{n:16s} encode {r['encode_mps']:7.2f} MP/s  decode {r['decode_mps']:7.2f} MP/s  ({r['bpp_file']:.3f} bpp)")
    c = res['cdc']
    print(f"cdc:{a.cdc} {c['size'][0]}x{c['size'][1]}: encode {c['encode_s']:.3f} s; decode " +
          ', '.join(f"S={s}: {t:.2f} s" for s, t in c['decode_s'].items()))
    return res


if __name__ == '__main__':
    main()
