"""Execute every ``notebooks/*.ipynb`` top to bottom, small size, and fail on any cell error.

Each notebook runs in a fresh ``python3`` kernel with ``SMCSCALE_NOTEBOOK_SMALL=1`` in a
temporary working directory. The kernel is pinned to this interpreter: a ``python3``
kernelspec whose argv is ``sys.executable`` is written to a temporary data dir that is put
first on ``JUPYTER_PATH`` (so a user-level ``python3`` kernelspec pointing at some other
Python cannot be picked up), and the repository root is put first on the kernel's
``PYTHONPATH`` so the notebooks exercise this checkout of ``smcscale``. A cell prepended
to each notebook (in memory only) checks that the kernel really is this interpreter.
"""

from __future__ import annotations

import os
import pathlib
import sys

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
CELL_TIMEOUT_S = 300


@pytest.fixture(scope="module")
def jupyter_path(tmp_path_factory):
    from ipykernel.kernelspec import write_kernel_spec

    data_dir = tmp_path_factory.mktemp("jupyter-data")
    # kernel.json with argv [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    write_kernel_spec(str(data_dir / "kernels" / "python3"))
    return data_dir


def _guard_cell():
    expected = (os.path.realpath(sys.executable), os.path.realpath(sys.prefix))
    return nbformat.v4.new_code_cell(
        "import os as _os, sys as _sys\n"
        "_got = (_os.path.realpath(_sys.executable), _os.path.realpath(_sys.prefix))\n"
        f"assert _got == {expected!r}, ('kernel runs', _got, 'test runs', {expected!r})\n"
        "assert _os.environ.get('SMCSCALE_NOTEBOOK_SMALL') == '1'\n"
        "del _os, _sys, _got"
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
@pytest.mark.slow
def test_notebook_runs(path, jupyter_path, tmp_path, monkeypatch):
    from nbclient.exceptions import CellExecutionError, CellTimeoutError

    monkeypatch.setenv("SMCSCALE_NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("JUPYTER_PATH", os.pathsep.join(filter(None, [str(jupyter_path), os.environ.get("JUPYTER_PATH")])))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))

    nb = nbformat.read(path, as_version=4)
    nb.cells.insert(0, _guard_cell())
    client = nbclient.NotebookClient(
        nb,
        kernel_name="python3",
        timeout=CELL_TIMEOUT_S,
        startup_timeout=120,
        resources={"metadata": {"path": str(tmp_path)}},
    )
    try:
        client.execute()
    except (CellExecutionError, CellTimeoutError) as exc:
        pytest.fail(f"{path.name}: a cell failed\n{exc}", pytrace=False)
