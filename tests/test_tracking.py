"""mbldm.tracking: modes are resolved without prompting, offline runs stay in their folder, disabled writes nothing."""
import os, subprocess, sys, textwrap, time
from pathlib import Path
import pytest, torch
import mbldm
from mbldm.tracking import resolve_mode, has_api_key, init_run, image_grid, progress, master_progress

@pytest.fixture
def no_key(tmp_path, monkeypatch):
    "No API key anywhere: no env key, no WANDB_MODE, an empty netrc, a private HOME and cwd."
    for k in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_BASE_URL"): monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path/"netrc"))
    monkeypatch.setenv("HOME", str(tmp_path/"home"))
    monkeypatch.setenv("WANDB_DIR", str(tmp_path/"wandb_dir"))
    monkeypatch.chdir(tmp_path)
    return tmp_path

def test_resolve_mode_without_key(no_key):
    assert not has_api_key()
    assert resolve_mode() == "offline"

def test_resolve_mode_env_and_arg(no_key, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert resolve_mode() == "disabled"
    assert resolve_mode("offline") == "offline"          # the argument beats the environment
    monkeypatch.setenv("WANDB_MODE", "Offline ")
    assert resolve_mode() == "offline"
    monkeypatch.setenv("WANDB_MODE", "nope")
    with pytest.raises(ValueError, match="WANDB_MODE"): resolve_mode()

def test_resolve_mode_with_key(no_key, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "k"*40)
    assert resolve_mode() == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert resolve_mode() == "disabled"                  # WANDB_MODE beats key detection

def test_netrc_key_is_found(no_key, monkeypatch):
    monkeypatch.setenv("WANDB_BASE_URL", "https://wandb.example.org")
    (no_key/"netrc").write_text("machine wandb.example.org\n  login user\n  password " + "k"*40 + "\n")
    os.chmod(no_key/"netrc", 0o600)
    assert has_api_key() and resolve_mode() == "online"
    (no_key/"netrc").write_text("machine other.host login user password x\n")
    assert not has_api_key()

def test_offline_run_writes_under_dir(no_key):
    d = no_key/"runs"
    run = init_run(mode="offline", dir=d, name="t", config={"lr": 0.1})
    run.log({"tracking_test_metric": torch.tensor(0.25)}, step=0)
    run.log_images("grid", torch.rand(2, 3, 8, 8), step=1)
    run_dir = run.dir.parent
    run.finish()
    assert run_dir.parent == d/"wandb" and run_dir.name.startswith("offline-run-")
    def logged(): return b"tracking_test_metric" in b"".join(p.read_bytes() for p in run_dir.glob("*.wandb"))
    t = time.time()
    while not logged() and time.time() - t < 20: time.sleep(0.2)  # wandb-core may still be flushing after finish()
    assert logged()                                          # the logged key is in the run file
    assert list(run_dir.rglob("*.png"))                      # the image grid was written
    assert not (no_key/"wandb").exists() and not (no_key/"wandb_dir").exists()

def test_disabled_writes_nothing(no_key):
    before = sorted(p.name for p in no_key.iterdir())
    with init_run(mode="disabled", dir=no_key/"runs") as run:
        run.log({"a": 1}); run.log_images("x", torch.rand(1, 3, 4, 4))
    assert run.dir is None
    assert sorted(p.name for p in no_key.iterdir()) == before

def test_online_without_key_fails_fast(no_key):
    code = textwrap.dedent("""
        import time
        from mbldm.tracking import init_run
        t = time.time()
        try: init_run(mode='online', dir='runs')
        except RuntimeError as e: print('ERR', e, 'SECS', time.time() - t); raise SystemExit(3)
        """)
    root = str(Path(mbldm.__file__).resolve().parent.parent)  # works without `pip install -e`
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run([sys.executable, "-c", code], stdin=subprocess.DEVNULL, capture_output=True,
                       text=True, timeout=120, env=env)         # stdin closed: a prompt would fail, not wait
    assert r.returncode == 3, r.stdout + r.stderr
    secs = float(r.stdout.split("SECS")[-1])                    # time of init_run itself, not of importing torch
    assert "no API key" in r.stdout and "offline" in r.stdout
    assert secs < 10, f"took {secs:.1f}s"
    assert not (no_key/"runs").exists()

def test_bad_images_are_rejected():
    with pytest.raises(ValueError, match=r"\[0,1\]"): image_grid(torch.full((1, 3, 4, 4), -1.0))
    with pytest.raises(ValueError, match="B,3,H,W"): image_grid(torch.rand(3, 4, 4))
    run = init_run(mode="disabled")
    with pytest.raises(ValueError, match="B,3,H,W"): run.log_images("x", torch.rand(2, 1, 4, 4))
    run.finish()

def test_image_grid_layout():
    imgs = torch.rand(3, 3, 5, 7)
    g = image_grid(imgs, pad=0)                             # ncols = ceil(sqrt(3)) = 2
    assert g.shape == (3, 10, 14)
    assert torch.equal(g[:, 5:, :7], imgs[2]) and torch.equal(g[:, 5:, 7:], torch.ones(3, 5, 7))

def test_progress_yields_everything():
    assert list(progress(range(7), desc="x")) == list(range(7))
    assert list(progress(iter("abc"))) == ["a", "b", "c"]   # no len: counts without a total
    assert list(progress([], total=0)) == []
    assert list(progress(range(10), total=3)) == [0, 1, 2]  # an explicit total caps the loop (fastprogress)
    mb = master_progress(range(3))
    assert [(e, b) for e in mb for b in progress(range(2), parent=mb)] == [(e, b) for e in range(3) for b in range(2)]

def _run_python(code):
    root = str(Path(mbldm.__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]), "WANDB_MODE": "disabled"}
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], stdin=subprocess.DEVNULL, capture_output=True,
                       text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout

def test_wandb_and_faiss_load_only_when_used():
    "Importing the codec, container, diffusion core and U-Net loads neither wandb nor FAISS; the first call that needs one does."
    out = _run_python("""
        import sys, torch
        import mbldm.codec, mbldm.container, mbldm.diffusion, mbldm.unet
        def loaded(): return [m for m in ('wandb', 'faiss') if m in sys.modules]
        print('import', loaded())
        c = mbldm.codec.load_codec('OPQ-32-8-8')
        c.decode(torch.zeros(1, 6, 2, 2, dtype=torch.long)); list(mbldm.tracking.progress(range(3)))
        print('decode', loaded())
        c.encode(torch.rand(3, 16, 16)); print('encode', loaded())
        mbldm.tracking.init_run(mode='disabled').finish(); print('run', loaded())
        """)
    assert out.split("\n")[:4] == ["import []", "decode []", "encode ['faiss']", "run ['wandb', 'faiss']"], out

def test_imports_work_without_wandb_and_faiss():
    "With wandb and FAISS unimportable, everything but runs and encoding works, and those name the package to install."
    out = _run_python("""
        import sys, torch
        sys.modules['wandb'] = sys.modules['faiss'] = None  # `import wandb` / `import faiss` raise ImportError
        import mbldm.codec, mbldm.container, mbldm.diffusion, mbldm.unet
        c = mbldm.codec.load_codec('OPQ-32-8-8')
        print(tuple(c.decode(torch.zeros(1, 6, 2, 2, dtype=torch.long)).shape), list(mbldm.tracking.progress(range(3))))
        for f in (lambda: mbldm.tracking.init_run(mode='disabled'), lambda: c.encode(torch.rand(3, 16, 16))):
            try: f()
            except ImportError as e: print('ImportError:', e)
        """)
    lines = out.splitlines()
    assert lines[0] == "(1, 3, 16, 16) [0, 1, 2]", out
    assert lines[1].startswith("ImportError: W&B tracking needs the wandb package") and "pip install wandb" in lines[1], out
    assert lines[2].startswith("ImportError: OPQ.encode needs FAISS") and "mbldm[cpu]" in lines[2], out
