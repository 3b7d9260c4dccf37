"""What the codec training recipe costs on held-out photos: OPQ initialisation, iterations and sample size.

Every arm trains ONE channel quantizer on a seeded sample of the stride-1 8x8 patches (+ vertical flips) of the
McM images and swaps it into a base codec (the others stay as given), then reports the training time (1 thread)
and the mean RGB PSNR (per-channel MSE, [0,1] scale) of that codec over the held-out images (default: the 24
Kodak photos; never the training set). Arms are `channel:recipe`, e.g.

* `Y:opq-faiss`: FAISS's `OPQMatrix(64, 4)` with every default (random initial rotation, 50 outer steps, its
  own 65,536-point sample) and a default `ProductQuantizer` on the rotated sample (the review's baseline);
* `Y:opq-identity`, `Y:opq-random`: `Quantizer('OPQ').fit` with `opq_init` identity / random;
* `Y:opq-faissinit`: the same, starting from FAISS's own random rotation (fixed seed 1234);
* `Y:pq`, `Cb:vq`, `Cr:vq`: `Quantizer('PQ'/'VQ').fit`.

Options per arm: `@n=65536`, `@niter=25`, `@opq_niter=50`, `@seed=0`, appended, e.g. `Y:opq-random@n=262144@opq_niter=100`.
`base` is the codec whose other channels are kept (a shipped spec or a codec file).

    python benchmarks/codec_ablation.py --train ../shared/data/mcm --eval ../shared/data/kodak \
        --base OPQ-32-8-8 Y:shipped Y:opq-faiss Y:opq-identity Y:opq-random
"""
import argparse, json, time
from pathlib import Path
import numpy as np
import torch

from mbldm.core import read_image
from mbldm.codec import Codec, load_codec, channel_vectors, CHANNELS, PATCH
from mbldm.quantizers import Quantizer, train_sample, K
from mbldm.metrics import psnr

EXTS = {'.png', '.jpg', '.jpeg'}


def faiss_default_opq(x, m, seed):
    "FAISS's OPQMatrix with all its defaults, then a default ProductQuantizer on the rotated vectors."
    import faiss
    opq = faiss.OPQMatrix(x.shape[1], m)
    opq.train(x)
    xr = opq.apply(x)
    pq = faiss.ProductQuantizer(x.shape[1], m, 8)
    pq.cp.seed = seed
    pq.train(xr)
    R = faiss.vector_to_array(opq.A).reshape(x.shape[1], x.shape[1])
    cb = faiss.vector_to_array(pq.centroids).reshape(m, K, -1)
    return Quantizer('OPQ', m=m)._set_codebooks(cb, R, dict(kind='OPQ', m=m, d=64, recipe='faiss-default'))


def faiss_init_opq(x, m, seed, niter, opq_niter):
    "`Quantizer.fit`'s OPQ recipe, but with FAISS's own initial rotation (QR of a Gaussian drawn with FAISS's fixed seed 1234)."
    import faiss
    from mbldm.quantizers import _fit_pq
    opq, inner = faiss.OPQMatrix(x.shape[1], m), faiss.ProductQuantizer(x.shape[1], m, 8)
    inner.cp.seed = seed
    opq.pq, opq.niter, opq.max_train_points = inner, opq_niter, len(x)
    opq.train(x)
    R = faiss.vector_to_array(opq.A).reshape(x.shape[1], x.shape[1])
    return Quantizer('OPQ', m=m)._set_codebooks(_fit_pq(opq.apply(x), m, niter, seed, False), R, dict(kind='OPQ', m=m, d=64))


def parse_arm(a):
    ch, _, rest = a.partition(':')
    recipe, *opts = rest.split('@')
    kw = dict(n=65536, niter=25, opq_niter=50, seed=0)
    for o in opts:
        k, v = o.split('='); kw[k] = int(v)
    return CHANNELS.index(ch), recipe, kw


def train(c, recipe, kw, vecs, base):
    q0 = base.quantizers[c]
    if recipe == 'shipped': return q0
    x = train_sample(vecs, kw['n'], kw['seed'])
    if recipe == 'opq-faiss': return faiss_default_opq(x, q0.m, kw['seed'])
    if recipe == 'opq-faissinit': return faiss_init_opq(x, q0.m, kw['seed'], kw['niter'], kw['opq_niter'])
    kind, _, init = recipe.partition('-')
    fit_kw = dict(seed=kw['seed'], niter=kw['niter'])
    if kind == 'opq': fit_kw.update(opq_niter=kw['opq_niter'], opq_init=init)
    return Quantizer(kind.upper(), m=q0.m, beam_size=q0.beam_size).fit(x, **fit_kw)


def evaluate(codec, imgs):
    return [psnr(codec.decode(codec.encode(x), size=x.shape[-2:])[0], x, data_range=1.0).item() for x in imgs]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('arms', nargs='+')
    ap.add_argument('--train', type=Path, required=True)
    ap.add_argument('--eval', type=Path, required=True)
    ap.add_argument('--base', default='OPQ-32-8-8')
    ap.add_argument('--threads', type=int, default=1)
    ap.add_argument('--out', type=Path)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    import faiss; faiss.omp_set_num_threads(a.threads)
    base = load_codec(a.base)
    train_files = sorted(p for p in a.train.iterdir() if p.suffix.lower() in EXTS)
    imgs = [read_image(p) for p in sorted(a.eval.iterdir()) if p.suffix.lower() in EXTS]
    vecs, rows = {}, []
    for arm in a.arms:
        c, recipe, kw = parse_arm(arm)
        if c not in vecs and recipe != 'shipped': vecs = {c: channel_vectors(train_files, c)}  # one channel in memory
        t0 = time.process_time()
        q = train(c, recipe, kw, vecs.get(c), base)
        secs = time.process_time() - t0
        qs = list(base.quantizers); qs[c] = q
        p = evaluate(Codec(base.spec, qs), imgs)
        rows.append(dict(arm=arm, base=str(base.spec), train_cpu_s=round(secs, 1), psnr=float(np.mean(p)), per_image=p))
        print(f"{arm:40s} train {secs:7.1f} s   mean RGB PSNR {np.mean(p):.3f} dB over {len(p)} images", flush=True)
    if a.out: a.out.write_text(json.dumps(rows, indent=1))


if __name__ == '__main__': main()
