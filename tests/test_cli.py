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


# ---- base codecs through the command line: container v2 -------------------------------------------------

def test_jpeg_through_the_cli_is_pillow_exactly(tmp_path, capsys):
    from mbldm.baselines import pillow_encode, pillow_decode
    from mbldm.container import header_bytes, read_header
    write_png(sample_image("chelsea")[:, :61, :90], tmp_path/"x.png")
    assert main(["compress", str(tmp_path/"x.png"), "-o", str(tmp_path/"x.mbl"), "--codec", "jpeg:30"]) == 0
    assert main(["decompress", str(tmp_path/"x.mbl"), "-o", str(tmp_path/"y.png")]) == 0
    jp = pillow_encode(read_image(tmp_path/"x.png"), "JPEG", 30)
    assert read_image(tmp_path/"y.png").equal(pillow_decode(jp))  # exactly Pillow's decoding of the same JPEG bytes
    data = (tmp_path/"x.mbl").read_bytes()
    assert len(data) == len(jp) + header_bytes("jpeg", "30") == len(jp) + 50
    assert read_header(data).version == 2
    out = capsys.readouterr().out
    assert f"{8 * len(data) / (61 * 90):.4f} bpp" in out  # the bpp printed is the file's
    assert main(["compress", str(tmp_path/"x.png"), "-o", str(tmp_path/"w.mbl"), "--codec", "webp:80"]) == 0
    assert main(["decompress", str(tmp_path/"w.mbl"), "-o", str(tmp_path/"w.png")]) == 0
    assert read_image(tmp_path/"w.png").equal(pillow_decode(pillow_encode(read_image(tmp_path/"x.png"), "WEBP", 80)))

# ---- every user error is one line, exit 2 ---------------------------------------------------------------

def one_line(capsys, *needles):
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for n in needles: assert n in err, (n, err)
    return err

@pytest.fixture
def png(tmp_path):
    write_png(sample_image("coffee")[:, :16, :16], tmp_path/"x.png"); return tmp_path/"x.png"

def test_output_folder_missing_or_a_file(tmp_path, png, capsys):
    assert main(["compress", str(png), "-o", str(tmp_path/"nodir"/"x.mbl")]) == 2
    err = one_line(capsys, f"output folder {tmp_path/'nodir'} does not exist")
    assert ".tmp" not in err
    assert main(["compress", str(png), "-o", str(png/"x.mbl")]) == 2  # NotADirectoryError territory
    one_line(capsys, f"{png} is a file, not a folder")
    assert main(["decompress", str(tmp_path/"missing.mbl"), "-o", str(tmp_path/"nodir"/"y.png")]) == 2
    one_line(capsys, "nodir")

def test_full_and_read_only_disks(tmp_path, png, capsys, monkeypatch):
    import errno, os
    def full(fd): raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(os, "fsync", full)
    assert main(["compress", str(png), "-o", str(tmp_path/"a.mbl"), "--codec", "jpeg:50"]) == 2
    one_line(capsys, "No space left on device", "disk is full")
    assert not list(tmp_path.glob(".*.tmp")) and not (tmp_path/"a.mbl").exists()
    monkeypatch.undo()
    real_open = os.open
    def read_only(path, *a, **k):  # what a read-only folder does to atomic_write's temporary file (tests run as root)
        if str(path).endswith(".tmp"): raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, *a, **k)
    monkeypatch.setattr(os, "open", read_only)
    assert main(["compress", str(png), "-o", str(tmp_path/"b.mbl"), "--codec", "jpeg:50"]) == 2
    err = one_line(capsys, f"{tmp_path/'b.mbl'}: Permission denied")
    assert ".tmp" not in err  # the user's file, not atomic_write's temporary one

NO_FAISS = "import sys; sys.modules['faiss'] = None; from mbldm.cli import main; sys.exit(main(sys.argv[1:]))"

@pytest.mark.parametrize("cmd", ["compress", "demo"])
def test_without_faiss_is_one_line(tmp_path, png, cmd):
    args = ["compress", str(png), "-o", str(tmp_path/"x.mbl")] if cmd == "compress" else ["demo", "--out", str(tmp_path/"demo")]
    r = subprocess.run([sys.executable, "-c", NO_FAISS, *args], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "needs FAISS" in r.stderr and "pip install" in r.stderr

def _checkpoint(root, weights):
    from mbldm.continuous import LatentDiffusion, model_config
    from mbldm.checkpoints import save_config
    from mbldm.unet import tiny
    from mbldm.core import save_tensors
    save_config(root, model_config(LatentDiffusion(T=10), tiny(channels=3, dim=16, dim_mults=(1, 2)), (3, 8, 8), codec="VQ-8-8-8"))
    step = root/"step_0000001"; step.mkdir()
    (step/"state.pt").write_bytes(b"")
    for f in ("model.safetensors", "ema.safetensors"):
        if isinstance(weights, bytes): (step/f).write_bytes(weights)
        else: save_tensors(step/f, weights)
    return root

@pytest.mark.parametrize("weights", [b"\x00garbage" * 10, {"not.a.unet.weight": __import__("torch").zeros(3)}], ids=["corrupt", "mismatched"])
def test_sample_bad_checkpoint_is_one_line(tmp_path, capsys, weights):
    ck = _checkpoint(tmp_path/"ck", weights)
    assert main(["sample", str(ck), "-o", str(tmp_path/"out"), "-n", "1", "--steps", "2"]) == 2
    one_line(capsys, "checkpoint", str(ck))

def test_run_failing_cell_names_cell_and_notebook_and_streams(tmp_path, capsys):
    import nbformat
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}, cells=[
        nbformat.v4.new_code_cell("run_dir = None", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell("print('progress-from-cell-2')"),
        nbformat.v4.new_code_cell("raise RuntimeError('boom in the experiment')")])
    nbformat.write(nb, tmp_path/"toy.ipynb")
    assert main(["run", str(tmp_path/"toy.ipynb"), "--run-dir", str(tmp_path/"run")]) == 2
    out, err = capsys.readouterr()
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "cell 4 (In [4])" in err and "RuntimeError: boom in the experiment" in err and str(tmp_path/"run"/"toy.ipynb") in err
    assert "progress-from-cell-2" in out and "Executing Cell 3" in out  # streamed while it ran
    assert (tmp_path/"run"/"toy.ipynb").is_file()


# ---- DIRAC: mbldm enhance, mbldm decompress --enhance ---------------------------------------------------

def _dirac_ckpt(d, zero=True, thresholds=None):
    "A tiny DIRAC checkpoint folder (config.json + weights); `zero`: the untrained, zero-output network."
    import torch
    from safetensors.torch import save_file
    from mbldm.adm import ADMUnet, adm_tiny
    from mbldm.dirac import Dirac, save_dirac_config
    torch.manual_seed(0)
    net = ADMUnet(adm_tiny())
    if not zero:
        for p in net.parameters():
            if p.ndim > 1 and p.abs().sum() == 0: torch.nn.init.normal_(p, std=0.05)
    save_dirac_config(d, net, Dirac(), 'jpeg', rate_range=(5, 50), thresholds=thresholds)
    for f in ('model.safetensors', 'ema.safetensors'): save_file(net.state_dict(), d/f)
    return d

@pytest.fixture
def jpg(tmp_path):
    from PIL import Image
    from mbldm.core import to_uint8
    a = to_uint8(sample_image("chelsea")[:, :40, :56])
    Image.fromarray(a).save(tmp_path/"x.jpg", quality=30)
    return tmp_path/"x.jpg"

def test_enhance_jpeg_untrained_is_the_jpeg(tmp_path, jpg, capsys):
    from mbldm.dirac import threshold_table
    import torch
    ck = _dirac_ckpt(tmp_path/"ck", thresholds=threshold_table({10: torch.linspace(-.2, .2, 11), 30: torch.linspace(-.1, .1, 11)}, 1., 'jpeg'))
    assert main(["enhance", str(jpg), "-o", str(tmp_path/"y.png"), "--model", str(ck)]) == 0
    out = capsys.readouterr().out
    assert "JPEG quality 30 (estimated)" in out and "DIRAC-1" in out and "thresholds [-0.100, 0.100] of jpeg:30 (nearest to 30)" in out, out
    assert read_image(tmp_path/"y.png").equal(read_image(jpg))   # zero-output network: exactly the JPEG
    assert main(["enhance", str(jpg), "-o", str(tmp_path/"z.png"), "--model", str(ck), "--late-start", "--quality", "12"]) == 0
    out = capsys.readouterr().out
    assert "DIRAC-100 (late start)" in out and "quality 12 (given)" in out and "[-0.200, 0.200] of jpeg:10 (nearest to 12)" in out, out

def test_enhance_trained_changes_the_image(tmp_path, jpg, capsys):
    ck = _dirac_ckpt(tmp_path/"ck", zero=False)
    assert main(["enhance", str(jpg), "-o", str(tmp_path/"y.png"), "--model", str(ck), "--steps", "3"]) == 0
    assert "no threshold table for jpeg:30" in capsys.readouterr().out
    y = read_image(tmp_path/"y.png")
    assert y.shape == (3, 40, 56) and not y.equal(read_image(jpg))

def test_enhance_errors_are_one_line(tmp_path, jpg, png, capsys):
    from mbldm.refiner import Refiner, save_refiner_config
    ck = _dirac_ckpt(tmp_path/"ck")
    save_refiner_config(tmp_path/"ref", Refiner())
    (tmp_path/"junk.jpg").write_bytes(b"not an image at all")
    cases = [
        (["enhance", str(png), "-o", str(tmp_path/"y.png"), "--model", str(ck)], "not a JPEG file (it is PNG)"),
        (["enhance", str(tmp_path/"junk.jpg"), "-o", str(tmp_path/"y.png"), "--model", str(ck)], "not a JPEG file"),
        (["enhance", str(jpg), "-o", str(tmp_path/"y.png"), "--model", str(tmp_path/"ref")], "a refiner checkpoint, not a DIRAC model"),
        (["enhance", str(jpg), "-o", str(tmp_path/"y.png"), "--model", str(tmp_path/"nothing")], "config.json"),
        (["enhance", str(jpg), "-o", str(tmp_path/"y.png"), "--model", str(ck), "--max-pixels", "1000"], "more than --max-pixels 1000"),
        (["enhance", str(jpg), "-o", str(tmp_path/"y.png"), "--model", str(ck), "--late-start", "--steps", "50"], "81..100"),
        (["enhance", str(jpg), "-o", str(tmp_path/"y.png"), "--model", str(ck), "--steps", "101"], "1..100"),
        (["enhance", str(jpg), "-o", str(tmp_path/"y.png"), "--model", str(ck), "--quality", "0"], "--quality"),
        (["enhance", str(tmp_path/"missing.jpg"), "-o", str(tmp_path/"y.png"), "--model", str(ck)], "missing.jpg"),
    ]
    for args, msg in cases:
        assert main(args) == 2, args
        one_line(capsys, msg)
    assert not (tmp_path/"y.png").exists()

@pytest.mark.parametrize("spec", ["jpeg:20", "webp:50", "model"])
def test_decompress_enhance_any_base_codec(tmp_path, png, codec_file, capsys, spec):
    ck = _dirac_ckpt(tmp_path/"ck", zero=False)
    extra = ["--codec", str(codec_file)] if spec == "model" else []
    assert main(["compress", str(png), "-o", str(tmp_path/"a.mbl"), "--codec", str(codec_file) if spec == "model" else spec]) == 0
    assert main(["decompress", str(tmp_path/"a.mbl"), "-o", str(tmp_path/"b.png"), *extra]) == 0
    assert main(["decompress", str(tmp_path/"a.mbl"), "-o", str(tmp_path/"c.png"), "--enhance", str(ck), "--steps", "2", *extra]) == 0
    out = capsys.readouterr().out
    assert "enhanced, DIRAC-2" in out, out
    b, c = read_image(tmp_path/"b.png"), read_image(tmp_path/"c.png")
    assert b.shape == c.shape == (3, 16, 16) and not b.equal(c)

def test_decompress_cdc_gamma_steps_seed(tmp_path, png, capsys):
    assert main(["compress", str(png), "-o", str(tmp_path/"c.mbl"), "--codec", "cdc:tiny"]) == 0
    run = lambda out, *opts: main(["decompress", str(tmp_path/"c.mbl"), "-o", str(tmp_path/out), *opts])
    assert run("a.png", "--gamma", "0", "--steps", "3") == 0
    assert "cdc decoded with gamma 0, 3 DDIM steps, seed 0" in capsys.readouterr().out
    assert run("b.png", "--gamma", "0", "--steps", "3", "--seed", "5") == 0       # gamma 0: no noise, the seed does not matter
    assert run("c.png", "--gamma", "1", "--steps", "3") == 0
    assert run("d.png", "--gamma", "1", "--steps", "3", "--seed", "5") == 0
    a, b, c, d = (read_image(tmp_path/f) for f in ("a.png", "b.png", "c.png", "d.png"))
    assert a.shape == (3, 16, 16) and a.equal(b) and not a.equal(c) and not c.equal(d)

def test_decompress_options_that_do_not_apply_are_refused(tmp_path, png, capsys):
    assert main(["compress", str(png), "-o", str(tmp_path/"j.mbl"), "--codec", "jpeg:30"]) == 0
    assert main(["compress", str(png), "-o", str(tmp_path/"c.mbl"), "--codec", "cdc:tiny"]) == 0
    assert main(["compress", str(png), "-o", str(tmp_path/"o.mbl"), "--codec", "OPQ-32-8-8"]) == 0
    j, c, o = str(tmp_path/"j.mbl"), str(tmp_path/"c.mbl"), str(tmp_path/"o.mbl")
    for args, msg in [([j, "--gamma", "0.5"], "--gamma applies to cdc files only"),
                      ([o, "--seed", "1"], "--seed needs a diffusion decoder: a cdc file, or --enhance CKPT"),
                      ([o, "--max-pixels", "100000"], "--max-pixels needs a diffusion decoder"),
                      ([j, "--gamma", "0.5", "--enhance", "ck"], "--gamma applies to cdc files only"),
                      ([j, "--steps", "3"], "--steps needs a diffusion decoder"),
                      ([j, "--late-start"], "--late-start needs --enhance"),
                      ([c, "--late-start"], "--late-start needs --enhance"),
                      ([j, "--seed", "3"], "--seed needs a diffusion decoder"),
                      ([j, "--max-pixels", "9"], "--max-pixels needs a diffusion decoder"),
                      ([j, "--steps", "2", "--seed", "3"], "--steps, --seed need a diffusion decoder"),
                      ([c, "--max-pixels", "255"], "16x16 is more than --max-pixels 255 pixels (raise the limit to decode it)"),
                      ([c, "--gamma", "-1"], "argument --gamma: must be a finite number >= 0, got -1"),
                      ([c, "--steps", "0"], "argument --steps: must be >= 1, got 0"),
                      ([c, "--steps", "9000"], "cannot take 9000 steps")]:
        assert main(["decompress", *args, "-o", str(tmp_path/"y.png")]) == 2, args
        one_line(capsys, msg)
    assert not (tmp_path/"y.png").exists()
    assert main(["decompress", c, "-o", str(tmp_path/"y.png"), "--max-pixels", "256", "--steps", "2", "--seed", "1"]) == 0  # a limit the CDC decoder honours

def test_learned_codecs_print_no_library_warnings(tmp_path, png):
    "A fresh process compressing and decompressing with cdc:tiny prints its result lines and nothing else on stderr."
    import subprocess, sys
    code = ("import sys; from mbldm.cli import main; "
            f"sys.exit(main(['compress', {str(png)!r}, '-o', {str(tmp_path/'c.mbl')!r}, '--codec', 'cdc:tiny']) or "
            f"main(['decompress', {str(tmp_path/'c.mbl')!r}, '-o', {str(tmp_path/'c.png')!r}, '--steps', '2']))")
    r = subprocess.run([sys.executable, '-W', 'default', '-c', code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert 'Warning' not in r.stderr, r.stderr


# ---- no option is silently ignored; every bad input is one line, exit 2 ----------------------------------

def _sampling_ckpt(root, ema=True):
    "A tiny continuous checkpoint that samples (T=10, 8x8 latents of the shipped VQ-8-8-8); `ema=False`: trained without EMA."
    import torch
    from safetensors.torch import save_file
    from mbldm.continuous import LatentDiffusion, model_config
    from mbldm.checkpoints import save_config
    from mbldm.unet import Unet, tiny
    torch.manual_seed(0)
    cfg = tiny(channels=3, dim=16, dim_mults=(1, 2), self_condition=True)
    save_config(root, {**model_config(LatentDiffusion(T=10), cfg, (3, 8, 8), codec="VQ-8-8-8"), **({} if ema else {"ema": False})})
    step = root/"step_0000001"; step.mkdir(); (step/"state.pt").write_bytes(b"")
    for f in ("model.safetensors",) + (("ema.safetensors",) if ema else ()): save_file(Unet(cfg).state_dict(), step/f)
    return root

def test_sample_options_that_do_not_apply_are_refused(tmp_path, capsys):
    ck = _sampling_ckpt(tmp_path/"ck")
    run = lambda *opts: main(["sample", str(ck), "-o", str(tmp_path/"s"), "-n", "1", "--steps", "2", *opts])
    assert run("--temperature", "0.5") == 2
    one_line(capsys, "--temperature applies to categorical checkpoints only", f"({ck} is a continuous checkpoint)")
    assert run("--eta", "0.5") == 2
    one_line(capsys, "--eta applies to --sampler ddim only")
    assert not (tmp_path/"s").exists()
    assert run("--eta", "0.5", "--sampler", "ddim") == 0 and len(list((tmp_path/"s").glob("*.png"))) == 1

def test_sample_honours_a_config_without_ema(tmp_path, capsys):
    "A model trained without EMA (config `ema: false`) samples without --no-ema: the config decides, as in `load_model`."
    ck = _sampling_ckpt(tmp_path/"ck", ema=False)
    assert main(["sample", str(ck), "-o", str(tmp_path/"s"), "-n", "1", "--steps", "2"]) == 0, capsys.readouterr().err
    assert (tmp_path/"s"/"sample_00000.png").is_file()

LEGACY = Path(__file__).parent/"data"/"legacy-codec"

def _with_identity(data, ident):
    "The bytes of .mbl file `data` claiming codec identity `ident` (CRC fixed)."
    import struct, zlib
    from mbldm.container import read_header
    hd = read_header(data); at = 5 + 1 + len(hd.kind) + 1 + len(hd.spec)
    body = data[:at] + ident + data[at + 16:-4]
    return body + struct.pack("<I", zlib.crc32(body))

def test_explicit_spec_finds_the_archived_codec(tmp_path, capsys):
    "--codec OPQ-32-8-8 (any spelling of the file's spec) decodes a file of an earlier OPQ-32-8-8 as the file's own lookup does."
    from mbldm.codec import pretrained_dir
    src = LEGACY/"OPQ-32-8-8.mbl"
    assert main(["decompress", str(src), "-o", str(tmp_path/"auto.png")]) == 0
    for spec in ("OPQ-32-8-8", "mbl:OPQ-32-8-8"):
        assert main(["decompress", str(src), "-o", str(tmp_path/f"{spec}.png"), "--codec", spec]) == 0, capsys.readouterr().err
        assert read_image(tmp_path/f"{spec}.png").equal(read_image(tmp_path/"auto.png"))
    capsys.readouterr()
    current = pretrained_dir()/"OPQ-32-8-8.safetensors"  # one model, not the family: its identity must be the file's
    assert main(["decompress", str(src), "-o", str(tmp_path/"y.png"), "--codec", str(current)]) == 2
    one_line(capsys, "id c2bf94f0a6d96cc9679d30e3f78d1ca7", "pass the codec file it was written with")
    forged = tmp_path/"forged.mbl"; forged.write_bytes(_with_identity(src.read_bytes(), bytes(range(16))))
    assert main(["decompress", str(forged), "-o", str(tmp_path/"y.png"), "--codec", "OPQ-32-8-8"]) == 2
    err = one_line(capsys, f"id {bytes(range(16)).hex()}", "no shipped or archived mbl:OPQ-32-8-8 has the id of the file")
    assert "but the decoder's codec ModelCodec('OPQ-32-8-8') has id " in err
    assert main(["decompress", str(src), "-o", str(tmp_path/"y.png"), "--codec", "PQ-32-8-8"]) == 2  # another spec: not searched
    one_line(capsys, "ModelCodec('PQ-32-8-8') has id")
    assert not (tmp_path/"y.png").exists()

def test_explicit_spec_must_be_the_files(tmp_path, png, capsys):
    assert main(["compress", str(png), "-o", str(tmp_path/"j.mbl"), "--codec", "jpeg:30"]) == 0
    assert main(["decompress", str(tmp_path/"j.mbl"), "-o", str(tmp_path/"a.png"), "--codec", "jpeg:30"]) == 0
    assert main(["decompress", str(tmp_path/"j.mbl"), "-o", str(tmp_path/"b.png"), "--codec", "jpeg:50"]) == 2
    one_line(capsys, "written with jpeg:30, but the codec given is jpeg:50")

def test_learned_codec_checkpoint_with_or_without_kind(tmp_path, png, capsys):
    "For a hyperprior or cdc file --codec is its checkpoint, spelled as compress takes it or as a folder; another kind is refused."
    from mbldm.checkpoints import SHIPPED_DIR
    assert main(["compress", str(png), "-o", str(tmp_path/"h.mbl"), "--codec", "hyperprior:tiny"]) == 0
    assert main(["compress", str(png), "-o", str(tmp_path/"c.mbl"), "--codec", "cdc:tiny"]) == 0
    h, c = str(tmp_path/"h.mbl"), str(tmp_path/"c.mbl")
    for codec in ("hyperprior:tiny", "tiny", str(SHIPPED_DIR/"hyperprior"/"tiny")):  # the folder by another path: same weights, same id
        assert main(["decompress", h, "-o", str(tmp_path/"h.png"), "--codec", codec]) == 0, capsys.readouterr().err
    assert main(["decompress", c, "-o", str(tmp_path/"c.png"), "--codec", "cdc:tiny", "--steps", "2"]) == 0
    assert main(["decompress", c, "-o", str(tmp_path/"d.png"), "--codec", str(SHIPPED_DIR/"cdc"/"tiny"), "--steps", "2"]) == 0
    assert read_image(tmp_path/"c.png").equal(read_image(tmp_path/"d.png"))
    capsys.readouterr()
    assert main(["decompress", c, "-o", str(tmp_path/"e.png"), "--codec", "hyperprior:tiny"]) == 2
    one_line(capsys, "--codec hyperprior:tiny is a hyperprior codec, but", "is a cdc file")

def test_inputs_outputs_and_folders_are_one_line(tmp_path, png, jpg, capsys):
    ck = _dirac_ckpt(tmp_path/"ck")
    assert main(["compress", str(png), "-o", str(tmp_path/"x.mbl"), "--codec", "jpeg:30"]) == 0
    (tmp_path/"folder.png").mkdir(); (tmp_path/"empty.mbl").write_bytes(b""); (tmp_path/"empty.png").write_bytes(b"")
    (tmp_path/"bin.yaml").write_bytes(b"\x89PNG\x00\xff")
    mbl, out = str(tmp_path/"x.mbl"), str(tmp_path/"out.png")
    cases = [
        (["compress", str(tmp_path/"folder.png")], "folder.png is a folder, not a file"),
        (["compress", str(tmp_path/"empty.png"), "-o", str(tmp_path/"e.mbl")], "empty file"),
        (["compress", str(png), "-o", str(tmp_path/"x.jpg"), "--codec", "jpeg:30"], "the output is an mbldm file (.mbl), not an image, but the name ends in .jpg"),
        (["compress", str(png), "-o", str(png)], "is the input file"),
        (["decompress", str(tmp_path/"folder.png"), "-o", out], "folder.png is a folder, not a file"),
        (["decompress", str(tmp_path/"empty.mbl"), "-o", out], "truncated (0 bytes)"),
        (["decompress", str(png), "-o", out], "not an mbldm compressed file"),
        (["decompress", mbl, "-o", str(tmp_path/"out.jpg")], "the output is a PNG image, but the name ends in .jpg; name it .png"),
        (["decompress", mbl, "-o", mbl], "is the input file"),
        (["decompress", str(tmp_path/"missing.mbl"), "-o", str(png)], "missing.mbl does not exist"),  # an existing -o: still the input's error
        (["enhance", str(tmp_path/"folder.png"), "-o", out, "--model", str(ck)], "folder.png is a folder, not a file"),
        (["enhance", str(jpg), "-o", str(tmp_path/"out.webp"), "--model", str(ck)], "the output is a PNG image, but the name ends in .webp"),
        (["enhance", str(jpg), "-o", str(jpg), "--model", str(ck)], "is the input file"),
        (["demo", "--out", str(png)], f"--out {png} is a file, not a folder"),
        (["run", "train_continuous", "--run-dir", str(png)], f"--run-dir {png} is a file, not a folder"),
        (["run", "train_continuous", "-f", str(tmp_path/"bin.yaml"), "--run-dir", str(tmp_path/"r")], "bin.yaml is not a text (YAML) file"),
        (["sample", str(ck), "-o", str(png)], f"-o {png} is a file, not a folder"),
    ]
    for args, msg in cases:
        assert main(args) == 2, args
        one_line(capsys, msg)
    assert not (tmp_path/"out.png").exists() and not (tmp_path/"r").exists() and read_image(png).shape == (3, 16, 16)

@pytest.mark.parametrize("args,msg", [
    (["decompress"], "mbldm decompress: error: the following arguments are required: input (see mbldm decompress --help)"),
    (["decompress", "x.mbl", "--steps", "abc"], "argument --steps: expected an integer, got 'abc'"),
    (["decompress", "x.mbl", "--seed", "-1"], "argument --seed: must be in 0..18446744073709551615, got -1"),
    (["decompress", "x.mbl", "--seed", str(2**64)], "argument --seed: must be in 0..18446744073709551615"),
    (["decompress", "x.mbl", "--gamma", "nan"], "argument --gamma: must be a finite number >= 0, got nan"),
    (["decompress", "x.mbl", "--max-pixels", "0"], "argument --max-pixels: must be >= 1, got 0"),
    (["enhance", "x.jpg", "-o", "y.png", "--model", "ck", "--quality", "101"], "argument --quality: must be in 1..100, got 101"),
    (["enhance", "x.jpg", "--model", "ck"], "required: -o/--output"),
    (["sample", "ck", "-o", "s", "-n", "0"], "argument -n/--n: must be >= 1, got 0"),
    (["sample", "ck", "-o", "s", "--eta", "-0.5"], "argument --eta: must be a finite number >= 0"),
    (["sample", "ck", "-o", "s", "--temperature", "inf"], "argument --temperature: must be a finite number >= 0, got inf"),
    (["sample", "ck", "-o", "s", "--sampler", "euler"], "argument --sampler: invalid choice: 'euler'"),
    (["nosuchcommand"], "mbldm: error: argument cmd: invalid choice: 'nosuchcommand'"),
])
def test_parse_errors_are_one_line(capsys, args, msg):
    assert main(args) == 2
    one_line(capsys, msg)

def test_codecs_lists_spellings_that_work(capsys):
    assert main(["codecs"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "OPQ-32-8-8" in lines and "jpeg: e.g. jpeg:30" in lines and "cdc: e.g. cdc:tiny" in lines and "ec: e.g. OPQ-32-8-8+ec" in lines
    assert not any(l.endswith(":Q") for l in lines)

def test_sample_checkpoint_api_honours_a_config_without_ema(tmp_path):
    "`checkpoints.sample_checkpoint` without `ema=`: the config decides (here: raw weights, there is no EMA file), as the CLI does."
    from mbldm.checkpoints import sample_checkpoint
    ck = _sampling_ckpt(tmp_path/"ck", ema=False)
    assert [p.name for p in sample_checkpoint(ck, tmp_path/"s", n=1, steps=2)] == ["sample_00000.png"]
    with pytest.raises(Exception, match="ema"): sample_checkpoint(ck, tmp_path/"t", n=1, steps=2, ema=True)  # asked for, and missing
