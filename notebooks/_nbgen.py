"""Shared builder of the ``_make_0N.py`` notebook generators.

Each generator appends cells with :func:`md` / :func:`code` (raw strings, written exactly as
given) and ends with ``main(OUT, __doc__)``: write the notebook without outputs, or with
``--execute`` run it at full size (``SMCSCALE_NOTEBOOK_SMALL`` unset) with the ``python3``
kernel and keep the outputs without per-cell timing metadata.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

REPO = "smcscale/smcscale"

cells: list = []


def md(text: str) -> None:
    cells.append(new_markdown_cell(text.strip("\n")))


def code(text: str) -> None:
    cells.append(new_code_cell(text.strip("\n")))


def build() -> nbformat.NotebookNode:
    nb = new_notebook(cells=cells)
    nb.metadata = {
        "kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
        "colab": {"provenance": []},
    }
    return nb


def main(out: pathlib.Path, doc: str, timeout: int = 900) -> None:
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--execute", action="store_true", help="run the notebook at full size and keep the outputs")
    args = parser.parse_args()
    nb = build()
    if args.execute:
        from nbclient import NotebookClient

        os.environ.pop("SMCSCALE_NOTEBOOK_SMALL", None)
        NotebookClient(
            nb, timeout=timeout, kernel_name="python3", record_timing=False,
            resources={"metadata": {"path": str(out.parent)}},
        ).execute()
        nb.metadata["language_info"] = {"name": "python"}
        for cell in nb.cells:
            cell.metadata.pop("execution", None)
    nbformat.validate(nb)
    nbformat.write(nb, out)
    print(f"wrote {out} ({out.stat().st_size / 1024:.0f} KiB)", file=sys.stderr)
