"""Experiment runner: data lookup never falls back silently; a failing cell is one ExperimentError naming the cell and notebook."""
import nbformat, pytest
from mbldm.experiments import data_path, run_experiment, ExperimentError

def test_explicit_data_dir_without_the_set_is_an_error(tmp_path, monkeypatch):
    (tmp_path/"elsewhere"/"kodak").mkdir(parents=True); (tmp_path/"mine").mkdir()
    monkeypatch.setenv("MBLDM_DATA", str(tmp_path/"elsewhere"))
    assert data_path("kodak") == tmp_path/"elsewhere"/"kodak"
    with pytest.raises(FileNotFoundError, match=r"data_dir .*mine has no 'kodak' sub-folder"): data_path("kodak", tmp_path/"mine")
    (tmp_path/"mine"/"kodak").mkdir()
    assert data_path("kodak", tmp_path/"mine") == tmp_path/"mine"/"kodak"

def test_failing_cell_is_one_experiment_error(tmp_path):
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}, cells=[
        nbformat.v4.new_code_cell("run_dir = None", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell("x = 1"),
        nbformat.v4.new_code_cell("raise KeyError('no such column')")])
    nbformat.write(nb, tmp_path/"exp.ipynb")
    with pytest.raises(ExperimentError) as e: run_experiment(tmp_path/"exp.ipynb", run_dir=tmp_path/"run", progress=False)
    msg = str(e.value)
    assert len(msg.splitlines()) == 1 and "cell 4 (In [4]) failed with KeyError" in msg and str(tmp_path/"run"/"exp.ipynb") in msg
