"""The notebooks run top to bottom at smoke size (``SMOKE=1``), and their pairs are in sync.

Each ``notebooks/NN_name.ipynb`` (what Colab users open) is executed with ``nbclient`` in a
fresh IPython kernel, in a temporary working directory, with ``PYTHONPATH`` pointing at the
repository root (so ``ssmjax`` and ``experiments`` import without an install) and the
ssmjax data cache in a temporary folder, and with XLA's cheapest compiles
(``JAX_DISABLE_MOST_OPTIMIZATIONS=1``, the ``fast_compile`` fixture's setting: at smoke size
the time is compiling; 94 -> 66 s for three notebooks on one core). A cell that raises fails
the test; every notebook must also produce at least one image. A second test checks that
each ``.ipynb`` holds the same cells as its jupytext source ``NN_name.py`` (``jupytext
--sync notebooks/*.py`` re-pairs them) and carries no outputs.

Deselect with ``-k "not notebook"`` for a quicker run.
"""

import json
import os
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
jupytext = pytest.importorskip("jupytext")
pytest.importorskip("ipykernel")
pytest.importorskip("matplotlib")

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.py"))
CELL_TIMEOUT_S = 600


def test_notebooks_exist():
    names = [p.stem for p in SOURCES]
    assert len(names) >= 5, names
    for source in SOURCES:
        assert source.with_suffix(".ipynb").is_file(), f"{source.name} has no paired .ipynb"


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.stem)
def test_notebook_pair_in_sync(source):
    text = jupytext.read(source)
    ipynb = nbformat.read(source.with_suffix(".ipynb"), as_version=4)
    assert [(c.cell_type, c.source) for c in ipynb.cells] == [
        (c.cell_type, c.source) for c in text.cells
    ], f"{source.name} and its .ipynb differ: run `jupytext --sync {source}`"
    for cell in ipynb.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, "outputs not stripped"


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.stem)
def test_notebook_runs_at_smoke_size(source, tmp_path, monkeypatch):
    monkeypatch.setenv("SMOKE", "1")
    pythonpath = [str(ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(pythonpath))
    monkeypatch.setenv("SSMJAX_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the notebooks' tempfile.mkdtemp() workdirs
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.setenv("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")  # compile-bound at smoke size
    monkeypatch.setenv("JUPYTER_PLATFORM_DIRS", "1")  # silences a jupyter_core deprecation
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's inline backend makes images
    # The kernel runs this interpreter (the one with ssmjax and ipykernel installed): a
    # kernelspec on JUPYTER_PATH takes precedence over any other "python3" kernel.
    spec = tmp_path / "jupyter" / "kernels" / "python3"
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    spec.joinpath("kernel.json").write_text(
        json.dumps({"argv": argv, "display_name": "Python 3", "language": "python"})
    )
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    notebook = nbformat.read(source.with_suffix(".ipynb"), as_version=4)
    client = nbclient.NotebookClient(
        notebook,
        timeout=CELL_TIMEOUT_S,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()  # raises CellExecutionError, with the cell and traceback, on any error
    images = [
        output
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
        if "image/png" in output.get("data", {})
    ]
    assert images, f"{source.name} produced no plot"
