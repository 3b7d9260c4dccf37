"""One contract test over every registered base codec (a codec registered later joins automatically)."""
import pytest, torch
from mbldm.core import sample_image
from mbldm.basecodecs import CODECS, base_codec, BaseCodec, ModelCodec, PillowCodec

X = torch.stack([sample_image("coffee")[:, 10:47, 20:70], sample_image("chelsea")[:, :37, :50]])  # 37 x 50: not a multiple of 8

@pytest.fixture(scope="module", params=sorted(k for k in CODECS if CODECS[k].example))  # a codec with a working example
def codec_rate(request):
    return base_codec(CODECS[request.param].example)

def test_roundtrip_shapes_ranges_bits(codec_rate):
    c, rate = codec_rate
    assert isinstance(c, BaseCodec) and rate in c.rates and c.name in CODECS
    x_hat, bits = c.roundtrip(X, rate)
    assert x_hat.shape == X.shape and x_hat.dtype == torch.float32
    assert x_hat.min() >= 0 and x_hat.max() <= 1
    assert bits.shape == (2,) and (bits > 0).all()
    assert ((x_hat - X).abs().mean(dim=(1, 2, 3)) < 0.2).all()  # a reconstruction, not noise
    for i in range(2):
        data = c.encode(X[i], rate)
        assert isinstance(data, bytes) and bits[i].item() == 8 * len(data)
        assert torch.equal(c.decode(data, rate, (37, 50)), x_hat[i])
    assert base_codec(f"{c.name}:{c.spec(rate)}")[1] == rate  # the spec the container stores rebuilds the codec and rate

def test_bad_rate_and_bad_image(codec_rate):
    c, rate = codec_rate
    with pytest.raises(ValueError, match="not one of"): c.roundtrip(X, -1)
    with pytest.raises(ValueError, match=r"\[0,1\]"): c.encode(X[0] + 1, rate)
    with pytest.raises(ValueError, match="shape"): c.encode(X[0, :2], rate)
    with pytest.raises(TypeError, match="tensor"): c.roundtrip(X.numpy(), rate)
    with pytest.raises(ValueError, match="one image"): c.encode(X, rate)

def test_registry_parses_user_specs(tmp_path):
    assert isinstance(base_codec("jpeg:30")[0], PillowCodec) and base_codec("JPEG:30")[1] == 30
    assert base_codec("webp:80")[0].fmt == "WEBP"
    c, r = base_codec("OPQ-32-8-8")
    assert isinstance(c, ModelCodec) and r == 0.75 and c.spec() == "OPQ-32-8-8"
    assert base_codec(c.codec)[0].identity == c.identity
    f = c.codec.save(tmp_path/"opq.safetensors")
    assert base_codec(str(f))[0].identity == c.identity
    for bad, msg in [("jpeg:abc", "integer"), ("jpeg:0", "not one of"), ("gif:3", "unknown codec 'gif'"),
                     ("XQ-1-2-3", "codec spec"), ("RQ-40-8-8", "no shipped codec")]:
        with pytest.raises(ValueError, match=msg): base_codec(bad)

def test_learned_codecs_are_registered_lazily():
    import subprocess, sys
    code = "import sys, mbldm.basecodecs as b; print('compressai' in sys.modules, 'mbldm.hyperprior' in sys.modules, sorted(b.CODECS))"
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True).stdout.split(' ', 2)
    assert out[:2] == ['False', 'False'] and "'cdc'" in out[2] and "'hyperprior'" in out[2]
