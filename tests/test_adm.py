"""The ADM (guided-diffusion) U-Net of DIRAC: the paper's size, shapes, zero output at init, clear input errors."""
import pytest, torch
from mbldm.adm import ADMConfig, ADMUnet, dirac_default, adm_tiny, count_params, timestep_embedding

def test_paper_size_on_meta_device():
    n = count_params(dirac_default())
    assert abs(n / 1e6 - 108.4) < 0.1, n
    # the mbldm Unet family at the same widths is a different (smaller) network
    from mbldm.unet import UnetConfig, count_params as unet_count
    assert 75e6 < unet_count(UnetConfig(dim=128, dim_mults=(1, 1, 2, 2, 4, 4), cond_channels=3)) < 80e6  # 79.0M

def test_tiny_shapes_zero_init_and_gradients():
    torch.manual_seed(0)
    net = ADMUnet(adm_tiny(channel_mult=(1, 2, 2)))
    x, c = torch.randn(2, 3, 16, 24), torch.rand(2, 3, 16, 24) * 2 - 1
    y = net(x, torch.tensor([999, 0]), c)
    assert y.shape == x.shape and y.abs().max() == 0
    y.sum().backward()   # the zero output conv still receives gradients
    assert net.out[-1].weight.grad.abs().sum() > 0

def test_time_and_condition_change_the_output():
    torch.manual_seed(0)
    net = ADMUnet(adm_tiny())
    for p in net.parameters():   # undo every zero initialisation
        if p.ndim > 1 and p.abs().sum() == 0: torch.nn.init.normal_(p, std=0.1)
    x, c = torch.randn(1, 3, 8, 8), torch.rand(1, 3, 8, 8)
    assert not torch.allclose(net(x, 10, c), net(x, 900, c))
    assert not torch.allclose(net(x, 10, c), net(x, 10, -c))

def test_embedding_matches_guided_diffusion():
    e = timestep_embedding(torch.tensor([0., 5.]), 8)
    assert torch.allclose(e[0], torch.tensor([1., 1, 1, 1, 0, 0, 0, 0]))
    f = torch.exp(-torch.log(torch.tensor(1e4)) * torch.arange(4) / 4)
    assert torch.allclose(e[1], torch.cat([(5 * f).cos(), (5 * f).sin()]))

def test_bad_inputs():
    net = ADMUnet(adm_tiny())
    x, c = torch.randn(1, 3, 8, 8), torch.rand(1, 3, 8, 8)
    with pytest.raises(ValueError, match='multiples of 2'): net(torch.randn(1, 3, 7, 8), 1, torch.rand(1, 3, 7, 8))
    with pytest.raises(ValueError, match='cond'): net(x, 1)
    with pytest.raises(ValueError, match=r'x has shape'): net(torch.randn(1, 4, 8, 8), 1, c)
    with pytest.raises(ValueError, match='t has shape'): net(x, torch.tensor([1, 2]), c)
    with pytest.raises(ValueError, match='groups'): ADMConfig(model_channels=20, groups=32)
    with pytest.raises(ValueError, match='attention_levels'): ADMConfig(attention_levels=(9,))
