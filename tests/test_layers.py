"""The layers of smcscale and the privacy of its helpers.

* The import contract (``[tool.importlinter]`` in pyproject.toml), checked with
  import-linter: the engine (the top-level modules of :mod:`smcscale` and
  :mod:`smcscale.models`) imports none of ``text``, ``diffusion``, ``tasks`` and
  ``workflow``; ``text`` and ``diffusion`` are independent; ``text`` does not import
  ``tasks``; nothing below :mod:`smcscale.workflow` imports it. Function-level (lazy)
  imports count.
* Every top-level module of smcscale is placed in the contract, so a new one cannot slip
  past it.
* No module uses another module's private names (``_name``): neither ``from m import _name``
  nor ``m._name`` on an imported module or on something imported from one; scanned over
  ``smcscale/``, ``benchmarks/`` and the notebooks (their generators and their code cells).
"""

from __future__ import annotations

import ast
import json
import os
import pathlib
import subprocess
import sys
import tomllib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "smcscale"
#: the subpackages above the engine (each has its own contracts)
UPPER = ("text", "diffusion", "tasks", "workflow")


def _lint_imports_command():
    exe = pathlib.Path(sys.executable).with_name("lint-imports")
    if exe.exists():
        return [str(exe)]
    pytest.importorskip("importlinter", reason="import-linter is in the test extra: pip install -e '.[test]'")
    return [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command; "
            "sys.exit(lint_imports_command())"]


def test_import_contracts_are_kept():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    out = subprocess.run([*_lint_imports_command(), "--no-cache", "--no-logo"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    report = out.stdout + out.stderr
    assert "Contracts: " in report, report
    assert out.returncode == 0, report[report.find("Contracts"):]


def _contracts():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]


def test_the_contract_places_every_top_level_module():
    engine = next(c for c in _contracts() if c["type"] == "forbidden" and "smcscale" in c["source_modules"])
    assert str(engine.get("as_packages", True)).lower() == "false"  # else `smcscale` would contain the upper layers
    assert {f"smcscale.{u}" for u in UPPER} | {f"smcscale.{u}.**" for u in UPPER} <= set(engine["forbidden_modules"])
    listed = set(engine["source_modules"])
    for path in sorted(PACKAGE.iterdir()):
        name = path.stem if path.suffix == ".py" else path.name
        if name.startswith("__") or not (path.suffix == ".py" or (path / "__init__.py").exists()):
            continue
        if name in UPPER:
            continue
        assert f"smcscale.{name}" in listed, (
            f"smcscale/{path.name} is in no layer: add smcscale.{name} to the engine contract in pyproject.toml "
            "(or move it into a subpackage)")
        if path.is_dir():
            assert f"smcscale.{name}.**" in listed, f"list smcscale.{name}.** too (as_packages is false)"
    for u in UPPER:
        assert (PACKAGE / u / "__init__.py").exists(), u


# ---------------------------------------------------------------------------------------
# private names

#: underscore names that are public API: namedtuple methods, and CPython's documented ones
ALLOWED_PRIVATE = {"_replace", "_fields", "_asdict", "_make", "_field_defaults", "_exit", "_getframe"}


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__")) and name not in ALLOWED_PRIVATE


def _private_module(tree_file: pathlib.Path, node: ast.ImportFrom, name: str) -> bool:
    """Whether ``from <node.module> import name`` imports a private *module* (``_name.py``), as
    the generators' ``from _nbgen import ...`` siblings do: that is the module's own business."""
    if node.level:
        base = tree_file.parent
        for _ in range(node.level - 1):
            base = base.parent
    else:
        base = ROOT
    base = base.joinpath(*(node.module or "").split(".")) if node.module else base
    return (base / f"{name}.py").exists() or (base / name / "__init__.py").exists()


def _offences(tree: ast.AST, where: str, path: pathlib.Path) -> list[str]:
    imported: set[str] = set()
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                imported.add(a.asname or a.name.split(".")[0])
        elif isinstance(node, ast.ImportFrom) and node.module != "__future__":
            for a in node.names:
                imported.add(a.asname or a.name)
                if _private(a.name) and not _private_module(path, node, a.name):
                    src = "." * node.level + (node.module or "")
                    out.append(f"{where}:{node.lineno}: from {src} import {a.name}")
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        chain = [node.attr]
        base = node.value
        while isinstance(base, ast.Attribute):
            chain.append(base.attr)
            base = base.value
        if isinstance(base, ast.Name) and base.id in imported and _private(node.attr):
            out.append(f"{where}:{node.lineno}: {base.id}.{'.'.join(reversed(chain))}")
    return out


def _notebook_code(path: pathlib.Path) -> str:
    cells = json.loads(path.read_text())["cells"]
    lines = []
    for cell in cells:
        if cell["cell_type"] != "code":
            continue
        for ln in "".join(cell["source"]).splitlines():
            stripped = ln.lstrip()
            # IPython magics and shell escapes are not Python: keep the indentation, drop the rest
            lines.append(ln[: len(ln) - len(stripped)] + "pass" if stripped[:1] in ("%", "!") else ln)
        lines.append("")
    return "\n".join(lines)


def _sources():
    files = sorted(PACKAGE.rglob("*.py")) + sorted((ROOT / "benchmarks").rglob("*.py"))
    files += sorted((ROOT / "notebooks").glob("*.py"))
    for f in files:
        yield f, f.read_text()
    for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
        yield nb, _notebook_code(nb)


def test_no_module_uses_another_modules_private_names():
    found = []
    for path, text in _sources():
        found += _offences(ast.parse(text, filename=str(path)), str(path.relative_to(ROOT)), path)
    assert not found, ("private names used across modules (make them public, or move the helper):\n  "
                       + "\n  ".join(found))


def test_the_private_name_scan_catches_what_it_should():
    code = (
        "import smcscale.smc as S\nfrom smcscale import smc\nfrom smcscale.fk import FeynmanKac\n"
        "from smcscale.smc import _run_core, run\n"
        "class A:\n    def f(self):\n        return self._x, type(self)._y\n"
        "def g(st):\n    return smc._num_steps(1), S.run, st._replace(a=1), FeynmanKac._fields, "
        "FeynmanKac._hidden, smc.run.__wrapped__, smc.sub._deep\n"
    )
    got = sorted(o.split(": ", 1)[1] for o in _offences(ast.parse(code), "x.py", PACKAGE / "x.py"))
    assert got == ["FeynmanKac._hidden", "from smcscale.smc import _run_core", "smc._num_steps", "smc.sub._deep"]
    # a private module file is the importer's own business (the notebook generators' _nbgen)
    gen = ast.parse("from _nbgen import code\nimport _machine\n_machine.x = 1\n")
    assert _offences(gen, "n.py", ROOT / "notebooks" / "n.py") == []
