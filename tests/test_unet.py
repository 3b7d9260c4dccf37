"""Edge cases and properties of mbldm.unet that do not belong in the lesson (all tiny configs, CPU, fast)."""
import pytest, torch
from dataclasses import replace
from mbldm.unet import Unet, UnetConfig, seed_default, refiner_default, tiny, count_params, param_table

torch.set_num_threads(1)


def _net(cfg, seed=0):
    torch.manual_seed(seed)
    return Unet(cfg).eval()


@pytest.mark.parametrize("cfg,shape", [
    (tiny(), (2, 3, 16, 16)),
    (tiny(dim_mults=(1, 2)), (1, 3, 8, 12)),                               # 2 levels, non-square
    (tiny(channels=6, out_channels=6*4, attn_levels=(0, 2)), (2, 6, 8, 8)),  # categorical-style head, attention at levels
    (tiny(time_emb='learned'), (2, 3, 16, 16)),
    (UnetConfig(dim=8, dim_mults=(1, 2, 2, 4), channels=1, mid_attn=False, attn_heads=1, attn_dim_head=4), (1, 1, 16, 16)),
])
def test_output_shapes(cfg, shape):
    x = torch.randn(shape)
    with torch.no_grad(): y = _net(cfg)(x, torch.randint(0, 1000, (shape[0],)))
    assert y.shape == (shape[0], cfg.out_ch, *shape[-2:])
    assert torch.isfinite(y).all()


def test_refiner_has_no_time_and_keeps_shape():
    net = _net(refiner_default(dim=8, dim_mults=(1, 2)))
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad(): assert net(x).shape == x.shape
    with pytest.raises(ValueError, match="time_emb=None"): net(x, torch.zeros(2))


def test_self_condition_doubles_input_and_defaults_to_zeros():
    a, b = _net(tiny()), _net(tiny(self_condition=True))
    assert b.init_conv.in_channels == 2*a.init_conv.in_channels == 6
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([5, 7])
    with torch.no_grad():
        assert torch.equal(b(x, t), b(x, t, x_self_cond=torch.zeros_like(x)))
        assert not torch.allclose(b(x, t), b(x, t, x_self_cond=torch.randn_like(x)))
    with pytest.raises(ValueError, match="self_condition=False"): a(x, t, x_self_cond=x)
    with pytest.raises(ValueError, match="x_self_cond has shape"): b(x, t, x_self_cond=x[:, :2])


def test_self_condition_only_touches_first_conv():
    "With the x_self_cond input weights zeroed, the self-conditioned net equals the plain one."
    a, b = _net(tiny(), seed=1), _net(tiny(self_condition=True), seed=1)
    sd = {k: v.clone() for k, v in b.state_dict().items()}
    w = torch.zeros_like(sd['init_conv.weight']); w[:, 3:] = a.state_dict()['init_conv.weight']
    sd['init_conv.weight'] = w
    a.load_state_dict({k: v for k, v in sd.items() if k != 'init_conv.weight'} | {'init_conv.weight': w[:, 3:]})
    b.load_state_dict(sd)
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([1, 2])
    with torch.no_grad(): torch.testing.assert_close(a(x, t), b(x, t, x_self_cond=torch.randn_like(x)))


def test_cond_is_required_and_changes_output():
    net = _net(tiny(cond_channels=3))
    assert net.init_conv.in_channels == 6
    x, t = torch.randn(1, 3, 8, 8), torch.tensor([3])
    with torch.no_grad(): assert not torch.allclose(net(x, t, cond=torch.zeros_like(x)), net(x, t, cond=x))
    with pytest.raises(ValueError, match="needs cond"): net(x, t)
    with pytest.raises(ValueError, match="cond has shape"): net(x, t, cond=torch.zeros(1, 3, 4, 4))
    with pytest.raises(ValueError, match="cond_channels=0"): _net(tiny())(x, t, cond=x)


@pytest.mark.parametrize("hw", [(18, 16), (16, 6), (2, 2)])
def test_bad_hw_raises_clearly(hw):
    with pytest.raises(ValueError, match="multiples of 4"): _net(tiny())(torch.randn(1, 3, *hw), torch.tensor([0]))


def test_bad_inputs_raise_clearly():
    net = _net(tiny())
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(ValueError, match=r"expected \(B, 3, H, W\)"): net(torch.randn(2, 4, 8, 8), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="t .* required"): net(x)
    with pytest.raises(ValueError, match="t has shape"): net(x, torch.tensor([0, 1, 2]))
    with torch.no_grad(): assert torch.equal(net(x, 7), net(x, torch.tensor([7, 7])))   # scalar t broadcasts


def test_int_and_float_t_agree():
    net, x = _net(tiny()), torch.randn(2, 3, 8, 8)
    with torch.no_grad(): assert torch.equal(net(x, torch.tensor([3, 400])), net(x, torch.tensor([3., 400.])))


def test_bad_configs():
    with pytest.raises(ValueError, match="resnet_block_groups"): UnetConfig(dim=20)
    with pytest.raises(ValueError, match="attn_levels"): tiny(attn_levels=(3,))
    with pytest.raises(ValueError, match="time_emb"): tiny(time_emb='fourier')


def test_seed_default_count_on_meta():
    n = count_params(seed_default())
    assert 40e6 <= n <= 60e6
    assert n == 54_553_046
    assert count_params(seed_default(categorical=True)) == n + 81*(6*256 - 6)
    with torch.device('meta'): m = Unet(seed_default())
    assert all(p.is_meta for p in m.parameters())


def test_refiner_count():
    assert 1.4e6 <= count_params(refiner_default()) <= 2.0e6


def test_param_table_sums_to_count():
    for cfg in (seed_default(), tiny(attn_levels=(1,)), refiner_default()):
        rows = param_table(cfg)
        assert sum(r['down'] + r['up'] for r in rows) == count_params(cfg)
        assert len(rows) == cfg.levels + 2


def test_count_matches_lucidrains_skeleton():
    "The library's Unet minus its extra attention/memory kv, with RMSNorm->GroupNorm, has exactly our count."
    dd = pytest.importorskip("denoising_diffusion_pytorch.denoising_diffusion_pytorch")
    for dim, mults, ch in [(80, (1, 2, 4, 8), 6), (16, (1, 2, 4), 3)]:
        with torch.device('meta'): m = dd.Unet(dim=dim, dim_mults=mults, channels=ch, self_condition=True)
        n = lambda mod: sum(p.numel() for p in mod.parameters())
        comparable = (n(m) - sum(n(l[2]) for l in [*m.downs, *m.ups]) - m.mid_attn.mem_kv.numel()
                      + sum(b.norm.g.numel() for b in m.modules() if isinstance(b, dd.Block)))
        assert comparable == count_params(UnetConfig(dim=dim, dim_mults=mults, channels=ch, self_condition=True))


def test_init_is_deterministic_under_seed():
    a, b, c = _net(tiny(), 0).state_dict(), _net(tiny(), 0).state_dict(), _net(tiny(), 1).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_config_round_trip_and_kwargs():
    cfg = tiny(channels=6)
    assert UnetConfig(**vars(cfg)) == cfg
    assert Unet(cfg, dim=8).cfg == replace(cfg, dim=8)
    assert Unet(dim=8, dim_mults=[1, 2]).cfg.dim_mults == (1, 2)


def test_train_step_reduces_loss_on_one_batch():
    torch.manual_seed(0)
    net = Unet(tiny(dim=8, dim_mults=(1, 2)))
    x, t, y = torch.randn(2, 3, 8, 8), torch.tensor([1, 2]), torch.randn(2, 3, 8, 8)
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    losses = []
    for _ in range(20):
        opt.zero_grad(); loss = torch.nn.functional.mse_loss(net(x, t), y); loss.backward(); opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5*losses[0]
