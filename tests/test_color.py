"""Edge cases and properties of mbldm.color that do not belong in the lesson."""
import tracemalloc
import numpy as np, pytest, torch
from mbldm.color import (rgb_to_ycbcr, ycbcr_to_rgb, pad_to_multiple, crop_to, patchify, unpatchify, all_patches,
                         RGB2YCBCR, YCBCR2RGB)

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_roundtrip_dtype_and_batch_shapes(dtype):
    g = torch.Generator().manual_seed(0)
    for shape in [(3, 5, 7), (2, 3, 4, 4), (2, 2, 3, 3, 1)]:
        x = torch.rand(shape, generator=g, dtype=dtype) * 255
        y = rgb_to_ycbcr(x)
        assert y.dtype == dtype and y.shape == x.shape
        torch.testing.assert_close(ycbcr_to_rgb(y), x, atol=1e-3, rtol=0)

def test_matrices_are_inverse():
    torch.testing.assert_close(RGB2YCBCR @ YCBCR2RGB, torch.eye(3, dtype=torch.float64), atol=1e-12, rtol=0)

def test_primaries_and_ranges():
    # pure red/green/blue/white/black give the JFIF values; the chroma of any [0,255] RGB stays in [0,255]
    rgb = torch.tensor([[255., 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255], [0, 0, 0]]).T[:, :, None]
    y = rgb_to_ycbcr(rgb)[:, :, 0].T
    torch.testing.assert_close(y[0], torch.tensor([76.245, 84.972, 255.5]), atol=1e-3, rtol=0)
    torch.testing.assert_close(y[2], torch.tensor([29.07, 255.5, 107.26544]), atol=1e-3, rtol=0)
    torch.testing.assert_close(y[3], torch.tensor([255., 128, 128]), atol=1e-4, rtol=0)
    x = torch.rand(3, 64, 64) * 255
    yy = rgb_to_ycbcr(x)
    assert yy.min() >= -1e-3 and yy.max() <= 255.5 + 1e-3

def test_no_clipping_and_integer_input():
    y = torch.tensor([0., 0., 255.]).view(3, 1, 1)  # a YCbCr value outside the RGB gamut
    rgb = ycbcr_to_rgb(y)
    assert rgb.min() < 0  # not clipped
    x8 = torch.randint(0, 256, (3, 4, 4), dtype=torch.uint8)
    torch.testing.assert_close(rgb_to_ycbcr(x8), rgb_to_ycbcr(x8.float()))

def test_bad_inputs():
    with pytest.raises(ValueError, match=r"\(\.\.\., 3, H, W\)"): ycbcr_to_rgb(torch.zeros(1, 4, 8, 8))
    with pytest.raises(ValueError, match="3, H, W"): rgb_to_ycbcr(torch.zeros(3, 8))
    with pytest.raises(TypeError, match="torch.Tensor"): rgb_to_ycbcr(np.zeros((3, 4, 4)))

def test_gradient_through_both():
    x = (torch.rand(1, 3, 8, 8) * 255).requires_grad_()
    ycbcr_to_rgb(rgb_to_ycbcr(x)).pow(2).sum().backward()
    torch.testing.assert_close(x.grad, 2 * x.detach(), atol=1e-3, rtol=1e-4)

@pytest.mark.parametrize("hw", [(1, 1), (7, 9), (8, 8), (17, 3), (33, 64)])
def test_pad_crop_roundtrip(hw):
    x = torch.randn(2, 3, *hw)
    p = pad_to_multiple(x, 8)
    assert p.shape[-2] % 8 == 0 and p.shape[-1] % 8 == 0 and p.shape[-2] - hw[0] < 8 and p.shape[-1] - hw[1] < 8
    assert torch.equal(crop_to(p, *hw), x)
    assert torch.equal(p[..., -1, -1], x[..., -1, -1])  # replicated corner

def test_pad_integer_and_2d_and_grad():
    idx = torch.randint(0, 256, (5, 6), dtype=torch.long)
    p = pad_to_multiple(idx, 4)
    assert p.dtype == torch.long and p.shape == (8, 8) and torch.equal(p[5:, :6], idx[-1:].expand(3, 6))
    x = torch.randn(3, 5, requires_grad=True)
    pad_to_multiple(x, 4).sum().backward()
    assert x.grad[-1, -1] == 2 * 4 and x.grad[0, 0] == 1  # (3,5)->(4,8): the corner appears in 2 rows x 4 cols
    with pytest.raises(ValueError, match="empty"): pad_to_multiple(torch.zeros(3, 0, 4))
    with pytest.raises(ValueError, match="m must be"): pad_to_multiple(x, 0)

def test_patchify_layout_and_errors():
    x = torch.arange(2 * 16 * 24).view(2, 16, 24).float()
    p = patchify(x)  # (2, 6, 64): 2 rows x 3 cols of patches
    assert p.shape == (2, 6, 64)
    assert torch.equal(p[1, 4], x[1, 8:16, 8:16].reshape(-1))
    assert torch.equal(unpatchify(p, 16, 24), x)
    for s in (1, 2, 4):
        assert torch.equal(unpatchify(patchify(x, s), 16, 24, s), x)
    with pytest.raises(ValueError, match="pad_to_multiple"): patchify(torch.zeros(1, 3, 16, 12))
    with pytest.raises(ValueError, match="do not tile"): unpatchify(p, 16, 16)
    with pytest.raises(ValueError, match="do not tile"): unpatchify(p[..., :32], 16, 24)

def test_all_patches_count_order_and_inputs():
    plane = np.random.default_rng(0).integers(0, 256, (20, 13)).astype(np.uint8)
    P = all_patches(plane)
    assert P.shape == (13 * 6, 64) and P.dtype == np.float32 and P.flags.c_contiguous
    assert np.array_equal(P[5 * 6 + 4], plane[5:13, 4:12].reshape(-1).astype(np.float32))
    assert np.array_equal(all_patches(torch.from_numpy(plane)), P)
    assert all_patches(np.zeros((8, 8))).shape == (1, 64)
    with pytest.raises(ValueError, match="smaller than the patch size"): all_patches(np.zeros((7, 20)))
    with pytest.raises(ValueError, match="one channel plane"): all_patches(np.zeros((3, 20, 20)))

def test_all_patches_memory_500x500():
    plane = np.random.default_rng(0).integers(0, 256, (500, 500)).astype(np.uint8)
    tracemalloc.start()
    P = all_patches(plane)
    _, peak = tracemalloc.get_traced_memory(); tracemalloc.stop()
    assert P.shape == (493 * 493, 64) and P.nbytes == 493 * 493 * 64 * 4
    assert peak < 1.1 * P.nbytes, f"peak {peak/2**20:.0f} MiB for a {P.nbytes/2**20:.0f} MiB result"
