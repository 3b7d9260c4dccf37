"""One checkpoint format: mbldm 0.1 checkpoints still load with identical outputs, both kinds round-trip through the
one loader, EMA is never silently replaced, `sample_checkpoint` dispatches on the kind (and applies a refiner)."""
import json, shutil
from pathlib import Path
import pytest, torch
from safetensors.torch import load_file

from mbldm.checkpoints import (load_model, read_config, sample_checkpoint, save_config, make_config, register_kind,
                               KINDS, CONFIG_FILE, CONFIG_FORMAT)
from mbldm.continuous import LatentDiffusion, model_config
from mbldm.refiner import Refiner, refiner_config, refine, load_refiner
from mbldm.unet import Unet, tiny
from mbldm.learner import Learner, EMACB, CheckpointCB
from mbldm.core import read_image

LEGACY = Path(__file__).parent/'data'/'legacy-0.1'


def test_legacy_continuous_checkpoint_gives_identical_samples():
    c = read_config(LEGACY/'continuous'/'checkpoints')
    assert (c['kind'], c['upgraded_from'], c['method']['snr_gamma']) == ('continuous', 1, 5.0)
    model, ld, c = load_model(LEGACY/'continuous'/'checkpoints')
    assert isinstance(ld, LatentDiffusion) and c['loaded']['weights'] == 'ema.safetensors'
    z = ld.sample(model, 2, tuple(c['latent_shape']), steps=5, sampler='ddim', generator=torch.Generator().manual_seed(0))
    # identical up to float summation order (CPU kernels split work by thread count): 1e-4 in [-1, 1] latents
    torch.testing.assert_close(z, load_file(LEGACY/'continuous_expected.safetensors')['z'], atol=1e-4, rtol=0)


def test_legacy_refiner_checkpoint_gives_identical_output():
    c = read_config(LEGACY/'refiner'/'checkpoints')
    assert (c['kind'], c['sigma_max'], c['network']['residual']) == ('refiner', 0.02, True)
    r = load_refiner(LEGACY/'refiner'/'checkpoints')
    e = load_file(LEGACY/'refiner_expected.safetensors')
    torch.testing.assert_close(refine(r, e['x']), e['y'], atol=1e-5, rtol=0)


def _fit(model, loss, batch, ck, steps=2, ema=True):
    cbs = ([EMACB(every=1, decay=0.5)] if ema else []) + [CheckpointCB(ck, every=steps)]
    return Learner(model, loss, lambda: batch, lr=1e-2, cbs=cbs).fit(steps)


def test_new_checkpoints_of_both_kinds_round_trip(tmp_path):
    torch.manual_seed(0)
    ld, cfg = LatentDiffusion(T=20, snr_gamma=3.), tiny(channels=6, self_condition=True, dim=8, dim_mults=(1, 2))
    learn = _fit(Unet(cfg), ld.loss_fn, torch.rand(2, 6, 4, 4)*2 - 1, tmp_path/'c')
    save_config(tmp_path/'c', model_config(ld, cfg, (6, 4, 4), codec='OPQ-32-8-8'))
    m, ld2, c = load_model(tmp_path/'c')
    assert (c['format'], c['kind']) == (CONFIG_FORMAT, 'continuous') and ld2 == ld
    for k, v in learn.ema.model.state_dict().items(): assert torch.equal(m.state_dict()[k], v)
    r = Refiner(tiny(channels=3, time_emb=None, dim=8, dim_mults=(1, 2)))
    x = torch.rand(2, 3, 8, 8)*2 - 1
    learn = _fit(r, lambda m, b: (m(b) - b.flip(-1)).abs().mean(), x, tmp_path/'r')
    save_config(tmp_path/'r', refiner_config(r, sigma_max=0.01))
    r2, method, c = load_model(tmp_path/'r')
    assert method is None and c['kind'] == 'refiner' and c['sigma_max'] == 0.01
    assert torch.equal(r2(x), learn.ema.model.eval()(x))


def test_ema_asked_and_absent_is_an_error(tmp_path):
    r = Refiner(tiny(channels=3, time_emb=None, dim=8, dim_mults=(1, 2)))
    _fit(r, lambda m, b: m(b).abs().mean(), torch.rand(1, 3, 8, 8), tmp_path/'r', ema=False)
    save_config(tmp_path/'r', refiner_config(r))
    with pytest.raises(FileNotFoundError, match='ema=False'): load_model(tmp_path/'r')
    assert load_model(tmp_path/'r', ema=False)[2]['loaded']['weights'] == 'model.safetensors'


def test_bad_configs_are_named(tmp_path):
    shutil.copytree(LEGACY/'continuous', tmp_path/'c')
    ck = tmp_path/'c'/'checkpoints'
    c = json.loads((ck/CONFIG_FILE).read_text())
    for change, msg in [(dict(format=7), 'config format 7'), (dict(kind='gan', format=2, network={}, method={}), "unknown model kind 'gan'"),
                        (dict(unet={**c['unet'], 'dim': 16}), 'do not fit'), (dict(diffusion={**c['diffusion'], 'temperature': 1}), 'temperature')]:
        (ck/CONFIG_FILE).write_text(json.dumps({**c, **change}))
        with pytest.raises(ValueError, match=msg): load_model(ck)
    (ck/CONFIG_FILE).write_text('[1, 2]')
    with pytest.raises(ValueError, match='JSON object'): load_model(ck)
    with pytest.raises(ValueError, match='unknown model kind'): make_config('gan', {})


def test_sample_checkpoint_dispatches_and_applies_a_refiner(tmp_path):
    ck = LEGACY/'continuous'/'checkpoints'
    plain = sample_checkpoint(ck, tmp_path/'plain', n=3, steps=4, sampler='ddim', batch_size=2, device='cpu')
    assert [p.name for p in plain] == ['sample_00000.png', 'sample_00001.png', 'sample_00002.png']
    refined = sample_checkpoint(ck, tmp_path/'ref', n=3, steps=4, sampler='ddim', batch_size=2, device='cpu',
                                refiner=LEGACY/'refiner'/'checkpoints')
    a, b = read_image(plain[0]), read_image(refined[0])
    r = load_refiner(LEGACY/'refiner'/'checkpoints')
    assert a.shape == b.shape == (3, 32, 32) and not torch.equal(a, b)
    assert (refine(r, a) - b).abs().max() <= 1/255 + 1e-6          # the refiner applied to the same sample (PNG rounding)
    with pytest.raises(ValueError, match='--refiner'): sample_checkpoint(LEGACY/'refiner'/'checkpoints', tmp_path/'x', n=1, device='cpu')
    with pytest.raises(ValueError, match='not a refiner'): sample_checkpoint(ck, tmp_path/'y', n=1, steps=2, device='cpu', refiner=ck)


def test_register_kind_makes_a_new_model_loadable(tmp_path, monkeypatch):
    import sys, types
    mod = types.ModuleType('mbldm_test_kind')
    mod.from_config = lambda c: (torch.nn.Linear(c['network']['n'], 1), {'scale': 2})
    monkeypatch.setitem(sys.modules, 'mbldm_test_kind', mod)
    monkeypatch.setitem(KINDS, 'linear', 'mbldm_test_kind')
    net = torch.nn.Linear(3, 1)
    Learner(net, lambda m, b: m(b).pow(2).mean(), lambda: torch.ones(2, 3), cbs=[CheckpointCB(tmp_path, every=1)]).fit(1)
    save_config(tmp_path, make_config('linear', {'n': 3}))
    m, method, c = load_model(tmp_path, ema=False)
    assert method == {'scale': 2} and torch.equal(m.weight, net.weight)


def test_legacy_checkpoint_decodes_with_the_codec_it_was_trained_on():
    "A 0.1 model names OPQ-32-8-8 and the identity of the codec shipped then: that codec (archived once retrained) decodes it."
    from mbldm.checkpoints import checkpoint_codec
    from mbldm.codec import load_codec
    from mbldm.latents import decode_latents
    old = 'c2bf94f0a6d96cc9679d30e3f78d1ca7153a2f6550baec5b1c784c0db6d861b3'
    _, _, c = load_model(LEGACY/'continuous'/'checkpoints')
    assert c['codec_identity'] == old
    codec = checkpoint_codec(c)
    assert codec.identity == old and checkpoint_codec(c, 'OPQ-32-8-8').identity == old
    z = load_file(LEGACY/'continuous_expected.safetensors')['z']
    assert decode_latents(z, codec).shape == (2, 3, 32, 32)
    if load_codec('OPQ-32-8-8').identity != old:  # the current codec is refused, never used in its place
        with pytest.raises(ValueError, match='not the one the model was trained with'): checkpoint_codec(c, load_codec('OPQ-32-8-8'))
