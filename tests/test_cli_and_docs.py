"""The quickstart contract: README's first bash block, .ci/run, the console command."""

import json
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _quickstart_lines():
    text = open(os.path.join(ROOT, "README.md")).read()
    block = re.search(r"```bash\n(.*?)```", text, re.S)
    assert block, "README has no fenced bash block"
    return [ln.strip() for ln in block.group(1).splitlines() if ln.strip() and not ln.strip().startswith("#")]


def test_readme_quickstart_is_two_lines_and_ci_runs_the_second():
    lines = _quickstart_lines()
    assert len(lines) == 2, lines
    assert "smcscale" in lines[0] and "pip install" in lines[0]
    assert "pytest" in lines[1] and "[test]" in lines[1]
    ci = open(os.path.join(ROOT, ".ci", "run")).read()
    assert lines[1] in ci.splitlines(), ".ci/run must contain the README's second quickstart line verbatim"


def test_cli_demo_runs_and_writes_plot_and_record(tmp_path):
    from smcscale.cli import main

    rc = main(["demo", "-N", "500", "-T", "60", "--seed", "3", "--out", str(tmp_path)])
    assert rc == 0
    rec = json.load(open(tmp_path / "demo.json"))
    assert rec["config"]["num_particles"] == 500 and len(rec["ess"]) == 60
    assert rec["log_z"] < 0 and all(0 <= e <= 500.001 for e in rec["ess"])
    assert (tmp_path / "demo.png").stat().st_size > 10_000


def test_cli_demo_is_reproducible(tmp_path):
    from smcscale.cli import main

    main(["demo", "-N", "300", "-T", "40", "--no-plot", "--out", str(tmp_path / "a")])
    main(["demo", "-N", "300", "-T", "40", "--no-plot", "--out", str(tmp_path / "b")])
    a = json.load(open(tmp_path / "a" / "demo.json"))
    b = json.load(open(tmp_path / "b" / "demo.json"))
    assert a["log_z"] == b["log_z"] and a["filtering_mean"] == b["filtering_mean"]


def test_cli_bad_option_gives_clear_error(tmp_path, capsys):
    from smcscale.cli import main

    rc = main(["demo", "-N", "100", "-T", "10", "--resampling", "bogus", "--out", str(tmp_path)])
    assert rc == 2
    assert "unknown resampling scheme 'bogus'" in capsys.readouterr().err


def test_console_script_is_installed():
    exe = os.path.join(os.path.dirname(sys.executable), "smcscale")
    if not os.path.exists(exe):
        pytest.skip("console script not installed in this environment")
    out = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "demo" in out.stdout
