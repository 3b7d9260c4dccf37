"""The `mbldm` command: round trip through files, clean one-line errors, exit codes."""
import subprocess, sys
from pathlib import Path
import pytest
from mbldm.cli import main
from mbldm.core import sample_image, write_png, read_image
from mbldm.codec import fit_codec

@pytest.fixture(scope="module")
def codec_file(tmp_path_factory):
    d = tmp_path_factory.mktemp("codec")
    return fit_codec("VQ-8-8-8", [sample_image("coffee")[:, :160, :160]], n_train=4000, niter=3).save(d/"vq.safetensors")

def test_roundtrip_with_codec_file(tmp_path, codec_file, capsys):
    write_png(sample_image("chelsea")[:, :50, :70], tmp_path/"a.png")
    assert main(["compress", str(tmp_path/"a.png"), "-o", str(tmp_path/"a.mbl"), "--codec", str(codec_file)]) == 0
    assert "bpp" in capsys.readouterr().out
    assert main(["decompress", str(tmp_path/"a.mbl"), "-o", str(tmp_path/"b.png"), "--codec", str(codec_file)]) == 0
    assert read_image(tmp_path/"b.png").shape == (3, 50, 70)

@pytest.mark.parametrize("args,msg", [
    (["compress", "missing.png"], "missing.png"),
    (["decompress", "missing.mbl"], "missing.mbl"),
    (["compress", "{png}", "--codec", "XQ-1-2-3"], "codec spec"),
    (["run", "no_such_experiment"], "unknown experiment"),
])
def test_errors_are_one_line(tmp_path, capsys, args, msg):
    write_png(sample_image("coffee")[:, :16, :16], tmp_path/"x.png")
    args = [a.replace("{png}", str(tmp_path/"x.png")) for a in args]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert msg in err and "Traceback" not in err and len(err.strip().splitlines()) == 1

def test_not_an_image(tmp_path, capsys):
    (tmp_path/"x.png").write_text("hello")
    assert main(["compress", str(tmp_path/"x.png")]) == 2
    assert "x.png" in capsys.readouterr().err

def test_console_script_installed():
    exe = Path(sys.executable).parent/"mbldm"
    assert exe.is_file(), f"the `mbldm` console script is not installed next to {sys.executable}"
    r = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "compress" in r.stdout
