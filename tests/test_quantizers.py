"""Property tests of mbldm.quantizers: determinism, training-set size, save/load, exact references, PCA ordering."""
import sys
import faiss, numpy as np, pytest, torch
from safetensors.torch import save_file
from mbldm.quantizers import (K, KINDS, Quantizer, train_sample, pca_projection, pca_order, adjacent_distance,
                              remap_codes, as_vectors, eigenvalue_allocation, random_rotation, OPQ_INITS)

D, M = 16, 2  # small vectors keep every fit well under a second

def make_data(n=3000, d=D, seed=0):
    "Correlated Gaussian vectors (a random linear map of white noise) with a non-zero mean."
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, d)) @ rng.standard_normal((d, d)) / np.sqrt(d) + 1).astype(np.float32)

X = make_data()

def fit(kind, x=X, **kw):
    kw = {'niter': 4, 'opq_niter': 3, **kw}
    return Quantizer(kind, m=1 if kind == 'VQ' else M, d=D, beam_size=2).fit(x, **kw)

@pytest.fixture(scope='module')
def qs(): return {k: fit(k) for k in KINDS}

@pytest.mark.parametrize('kind', KINDS)
def test_deterministic(kind, qs):
    q = fit(kind)
    assert torch.equal(q.codebooks, qs[kind].codebooks) and torch.equal(q.rotation, qs[kind].rotation)

def test_seed_matters():
    assert not torch.equal(fit('PQ', seed=1).codebooks, fit('PQ', seed=0).codebooks)

def test_shapes_and_bits(qs):
    for kind, q in qs.items():
        dsub = D if kind in ('RQ', 'VQ') else D // M
        assert q.codebooks.shape == (q.m, K, dsub) and q.rotation.shape == (D, D)
        codes = q.encode(X[:10])
        assert codes.dtype == np.int64 and codes.shape == (10, q.m) and q.bits == 8 * q.m
        assert q.decode(codes).shape == (10, D) and q.decode(codes).dtype == torch.float32
    assert qs["RQ"]._encoder()[0].code_size == M  # 8-bit stages, no stored norm: one byte per code

def test_all_points_used_no_faiss_sample():
    "n_train=None trains k-means on all N > 65,536 points, unlike FAISS's default sample."
    x = make_data(70_000, d=4, seed=1)
    q = Quantizer('VQ', d=4).fit(x, niter=2)
    assert q.meta['n_train_used'] == q.meta['n_input'] == 70_000
    def kmeans(max_ppc):
        cp = faiss.ClusteringParameters(); cp.niter, cp.seed = 2, 0
        if max_ppc: cp.max_points_per_centroid = max_ppc
        km = faiss.Clustering(4, K, cp); km.train(x, faiss.IndexFlatL2(4))
        return faiss.vector_to_array(km.centroids).reshape(K, 4)
    assert np.array_equal(q.codebooks[0].numpy(), kmeans(10**6))  # all points
    assert not np.array_equal(q.codebooks[0].numpy(), kmeans(None))  # FAISS default: 65,536-point sample

@pytest.mark.parametrize('kind', ['PQ', 'OPQ', 'RQ'])
def test_n_train_honoured(kind):
    q = fit(kind, n_train=1000, seed=3)
    assert q.meta['n_train_used'] == 1000 and q.meta['n_input'] == len(X) and q.meta['seed'] == 3
    ref = fit(kind, x=train_sample(X, 1000, seed=3), seed=3)
    assert torch.equal(q.codebooks, ref.codebooks)
    assert fit(kind, n_train=10**9).meta['n_train_used'] == len(X)

def test_train_sample():
    assert train_sample(X) is X
    s = train_sample(X, 500, seed=1)
    assert s.shape == (500, D) and np.array_equal(s, train_sample(X, 500, seed=1))
    with pytest.raises(ValueError, match='at least'): train_sample(X, 10)

@pytest.mark.parametrize('kind', KINDS)
def test_save_load_round_trip(kind, qs, tmp_path):
    q = qs[kind]
    q2 = Quantizer.load(q.save(tmp_path/'q.safetensors'))
    assert q2.kind == q.kind and q2.m == q.m and q2.beam_size == q.beam_size and q2.meta == q.meta
    codes = q.encode(X)
    assert np.array_equal(q2.encode(X), codes)
    assert torch.equal(q2.decode(codes), q.decode(codes))
    assert not list(tmp_path.glob('.*.tmp'))  # the atomic write left no temp file

def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError): Quantizer.load(tmp_path/'missing.safetensors')
    (tmp_path/'junk.safetensors').write_bytes(b'not a safetensors file')
    with pytest.raises(ValueError, match='safetensors'): Quantizer.load(tmp_path/'junk.safetensors')
    save_file({'w': torch.zeros(2)}, str(tmp_path/'other.safetensors'))
    with pytest.raises(ValueError, match='not a saved quantizer'): Quantizer.load(tmp_path/'other.safetensors')

def test_from_state_dict_checks(qs):
    q = qs['PQ']
    with pytest.raises(ValueError, match='codebooks must have shape'):
        Quantizer.from_state_dict({'codebooks': torch.zeros(3, K, 8), 'rotation': torch.eye(D)}, q.meta)
    with pytest.raises(ValueError, match='missing'): Quantizer.from_state_dict({'codebooks': q.codebooks}, q.meta)

def test_opq_rotation_orthogonal(qs):
    R = qs['OPQ'].rotation
    assert (R @ R.T - torch.eye(D)).abs().max() < 1e-5
    assert not torch.equal(R, torch.eye(D))  # it did rotate
    for kind in ('VQ', 'PQ', 'RQ'): assert torch.equal(qs[kind].rotation, torch.eye(D))

def test_eigenvalue_allocation():
    "Rows are the principal axes, dealt to the sub-spaces so that their eigenvalue products balance (Ge et al. 2013)."
    rng = np.random.default_rng(1)
    lam = np.geomspace(400, 0.25, D)  # variances of the principal axes
    x = ((rng.standard_normal((20000, D)) * np.sqrt(lam)) @ random_rotation(D, 3).T).astype(np.float32)
    R = eigenvalue_allocation(x, M)
    assert np.abs(R @ R.T - np.eye(D)).max() < 1e-5
    cov = np.cov(x @ R.T, rowvar=False)
    assert np.abs(cov - np.diag(np.diag(cov))).max() < 0.05 * lam[0]  # the rotated dimensions are decorrelated
    logs = np.log(np.diag(cov)).reshape(M, -1).sum(1)
    contiguous = np.log(np.sort(np.diag(cov))[::-1]).reshape(M, -1).sum(1)  # the top half of the axes in one sub-space
    assert abs(logs[0] - logs[1]) < 0.2 * abs(contiguous[0] - contiguous[1])

@pytest.mark.parametrize('init', OPQ_INITS)
def test_opq_init(init):
    q = fit('OPQ', opq_init=init)
    assert q.meta['opq_init'] == init
    assert (q.rotation @ q.rotation.T - torch.eye(D)).abs().max() < 1e-5
    assert torch.equal(fit('OPQ', opq_init=init).rotation, q.rotation)  # deterministic for every start
    others = [fit('OPQ', opq_init=i).rotation for i in OPQ_INITS if i != init]
    assert not any(torch.allclose(q.rotation, r, atol=1e-3) for r in others)  # the start matters
    with pytest.raises(ValueError, match='opq_init must be one of'): fit('OPQ', opq_init='pca')

@pytest.mark.parametrize('kind', KINDS)
def test_torch_decode_matches_faiss(kind, qs):
    q = qs[kind]
    codes = q.encode(X[:500])
    enc, rot = q._encoder()
    ref = enc.decode(codes.astype(np.uint8))
    if kind == "OPQ": ref = rot.reverse_transform(ref)
    np.testing.assert_allclose(q.decode(codes).numpy(), ref, rtol=1e-5, atol=1e-5)

def test_mse_ordering(qs):
    mse = {k: ((q.decode(q.encode(X)) - torch.from_numpy(X))**2).mean().item() for k, q in qs.items()}
    assert mse['RQ'] <= mse['OPQ'] <= mse['PQ'] < mse['VQ']

@pytest.mark.parametrize('kind', ['VQ', 'PQ'])
def test_encode_matches_brute_force(kind, qs):
    "FAISS's codes are the exact nearest codewords of every sub-vector (ties aside)."
    q, x = qs[kind], X[:1000].astype(np.float64)
    cb = q.codebooks.double().numpy()
    sub = x.reshape(len(x), q.m, -1)
    dist = ((sub[:, :, None, :] - cb[None]) ** 2).sum(-1)  # (N, m, K)
    codes = q.encode(X[:1000])
    best = dist.argmin(-1)
    got = np.take_along_axis(dist, codes[..., None], -1)[..., 0]
    assert np.allclose(got, dist.min(-1), rtol=1e-5, atol=1e-4)  # FAISS's choice is a nearest codeword
    assert (codes == best).mean() > 0.999

def test_rq_beam_is_exposed():
    q = Quantizer('RQ', m=M, d=D, beam_size=3)
    assert q.beam_size == 3 and Quantizer('RQ').beam_size == 5  # FAISS's default beam
    q.fit(X, niter=3)
    assert q._encoder()[0].max_beam_size == 3 and q.meta['beam_size'] == 3

def test_pca_order_function():
    rng = np.random.default_rng(0)
    cb = torch.from_numpy(rng.standard_normal((K, 8)) * np.linspace(3, 0.5, 8))
    perm = pca_order(cb)
    assert sorted(perm.tolist()) == list(range(K))
    p = pca_projection(cb[perm])
    assert (p[1:] <= p[:-1]).all()
    assert torch.equal(pca_order(cb + 5), perm) and torch.equal(pca_order(-cb), perm.flip(0))
    assert adjacent_distance(cb[perm]) < 0.9 * adjacent_distance(cb)
    tied = torch.zeros(K, 2); tied[:, 0] = torch.arange(K) % 4  # many equal projections: stable sort
    pt = pca_order(tied)
    for v in range(4): assert pt[tied[pt, 0] == v].tolist() == sorted(pt[tied[pt, 0] == v].tolist())

@pytest.mark.parametrize('kind', KINDS)
def test_pca_ordering_invariants(kind, qs):
    q = qs[kind]
    qo, perms = q.pca_ordered(), q.pca_perms()
    assert qo.meta['pca_ordered'] and not q.meta['pca_ordered']
    codes = q.encode(X)
    new = remap_codes(codes, perms)
    assert np.array_equal(qo.encode(X), new)
    assert torch.equal(qo.decode(new), q.decode(codes))  # bit-identical reconstructions
    assert torch.equal(remap_codes(torch.from_numpy(codes), perms), torch.from_numpy(new))
    for c in qo.codebooks: assert (pca_projection(c).diff() <= 0).all()
    assert torch.equal(qo.pca_perms(), torch.arange(K).expand(q.m, K))  # ordering is idempotent

def test_input_errors(qs):
    q = Quantizer('PQ', m=M, d=D)
    with pytest.raises(RuntimeError, match='not fitted'): q.encode(X)
    with pytest.raises(RuntimeError, match='not fitted'): q.decode(np.zeros((2, M), np.int64))
    with pytest.raises(ValueError, match=r'\(N, 16\)'): q.fit(X[:, :8])
    with pytest.raises(ValueError, match='at least'): q.fit(X[:100])
    with pytest.raises(ValueError, match=r'\(N, 16\)'): qs['PQ'].encode(X[:, :8])
    with pytest.raises(ValueError, match=r'\(N, 16\)'): qs['PQ'].encode(X[0])
    bad = X[:5].copy(); bad[2, 3] = np.nan
    with pytest.raises(ValueError, match='NaN'): qs['PQ'].encode(bad)
    with pytest.raises(ValueError, match=r'\(N, 2\)'): qs['PQ'].decode(np.zeros((3, 3), np.int64))
    with pytest.raises(ValueError, match='in \\[0, 256\\)'): qs['PQ'].decode(np.full((3, 2), 256))
    with pytest.raises(TypeError, match='integers'): qs['PQ'].decode(np.zeros((3, 2)))
    with pytest.raises(ValueError, match='kind'): Quantizer('LSQ')
    with pytest.raises(TypeError, match='numeric'): as_vectors(np.array([['a', 'b']]), 2)

def test_encode_accepts_tensors_and_views(qs):
    q = qs['OPQ']
    xt = torch.from_numpy(X[:50]).double()
    assert np.array_equal(q.encode(xt), q.encode(X[:50]))
    wide = np.concatenate([X[:50], X[:50]], 1)[:, ::2]  # non-contiguous view
    assert np.array_equal(q.encode(wide), q.encode(np.ascontiguousarray(wide)))
    assert q.encode(np.zeros((0, D), np.float32)).shape == (0, q.m)

def test_decoding_without_faiss(monkeypatch):
    "`pip install mbldm` without the cpu/gpu extra: a shipped codec loads and decodes; encoding names the extra."
    from mbldm.codec import load_codec
    monkeypatch.setitem(sys.modules, 'faiss', None)  # `import faiss` now raises ImportError, as if it were not installed
    c = load_codec('OPQ-32-8-8')
    codes = torch.randint(0, 256, (1, 6, 4, 4))
    assert c.decode(codes).shape == (1, 3, 32, 32)
    with pytest.raises(ImportError, match=r"mbldm\[cpu\]"): c.encode(torch.rand(3, 32, 32))
