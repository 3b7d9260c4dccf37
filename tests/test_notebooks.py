"""Every library notebook in `nbs/` is executed as one pytest item (nbdev's own runner, skip flags from settings.ini)."""
from pathlib import Path
import os, pytest
import nbdev.test as nbt  # imported as a module: a bare `test_nb` would be collected by pytest
from nbdev.config import get_config

NBS = Path(__file__).resolve().parent.parent/"nbs"
NOTEBOOKS = sorted(p for p in NBS.glob("*.ipynb") if not p.name.startswith("_"))

@pytest.mark.parametrize("nb", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook(nb, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    flags = get_config().tst_flags.split()
    ok, secs = nbt.test_nb(nb, skip_flags=flags)
    assert ok, f"{nb.name} failed (its traceback is printed above)"

def test_notebooks_found():
    assert len(NOTEBOOKS) >= 2, f"no notebooks found under {NBS}"
