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


@pytest.mark.slow
def test_cli_demo_runs_and_writes_plot_and_record(tmp_path):
    from smcscale.workflow.cli import main

    rc = main(["demo", "-N", "500", "-T", "60", "--seed", "3", "--out", str(tmp_path)])
    assert rc == 0
    rec = json.load(open(tmp_path / "demo.json"))
    assert rec["config"]["num_particles"] == 500 and len(rec["ess"]) == 60
    assert rec["log_z"] < 0 and all(0 <= e <= 500.001 for e in rec["ess"])
    assert (tmp_path / "demo.png").stat().st_size > 10_000


@pytest.mark.slow
def test_cli_demo_is_reproducible(tmp_path):
    from smcscale.workflow.cli import main

    main(["demo", "-N", "300", "-T", "40", "--no-plot", "--out", str(tmp_path / "a")])
    main(["demo", "-N", "300", "-T", "40", "--no-plot", "--out", str(tmp_path / "b")])
    a = json.load(open(tmp_path / "a" / "demo.json"))
    b = json.load(open(tmp_path / "b" / "demo.json"))
    assert a["log_z"] == b["log_z"] and a["filtering_mean"] == b["filtering_mean"]


def test_cli_bad_option_gives_clear_error(tmp_path, capsys):
    from smcscale.workflow.cli import main

    rc = main(["demo", "-N", "100", "-T", "10", "--resampling", "bogus", "--out", str(tmp_path)])
    assert rc == 2
    assert "unknown resampling scheme 'bogus'" in capsys.readouterr().err


def test_console_script_is_installed():
    exe = os.path.join(os.path.dirname(sys.executable), "smcscale")
    if not os.path.exists(exe):
        pytest.skip("console script not installed in this environment")
    out = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "demo" in out.stdout


def _one_error_line(capsys):
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in captured.err, captured.err
    return lines[0]


def test_cli_missing_config_file_is_one_line_naming_it(tmp_path, capsys):
    from smcscale.workflow.cli import main

    missing = tmp_path / "nowhere.toml"
    assert main(["run", "--config", str(missing), "--out", str(tmp_path / "out")]) == 2
    line = _one_error_line(capsys)
    assert line.startswith("smcscale: error: ") and str(missing) in line and "no such config file" in line
    assert not (tmp_path / "out").exists()


def test_cli_malformed_config_names_the_file_line_and_column(tmp_path, capsys):
    from smcscale.workflow.cli import main

    bad = tmp_path / "grid.toml"
    bad.write_text('budgets = [1, 2]\nsplit = easy-test\n')
    assert main(["run", "--config", str(bad), "--out", str(tmp_path / "out")]) == 2
    line = _one_error_line(capsys)
    assert f"{bad}: not valid TOML" in line and "line 2, column 9" in line
    bad_json = tmp_path / "grid.json"
    bad_json.write_text('{"budgets": [1, 2],}')
    assert main(["run", "--config", str(bad_json)]) == 2
    line = _one_error_line(capsys)
    assert f"{bad_json}: not valid JSON" in line and "line 1 column 20" in line
    # a method without a kind: also one line, naming the file
    bad.write_text('[[methods]]\nname = "pf"\n')
    assert main(["run", "--config", str(bad)]) == 2
    line = _one_error_line(capsys)
    assert str(bad) in line and "each method needs 'name' and 'kind'" in line
    assert not (tmp_path / "out").exists()


def test_cli_ctrl_c_is_one_line_with_exit_130_and_says_how_to_resume(tmp_path, monkeypatch, capsys):
    from smcscale.workflow import experiment as E
    from smcscale.workflow.cli import main

    def interrupted(cfg, out_dir, **kw):
        os.makedirs(out_dir)
        raise KeyboardInterrupt

    monkeypatch.setattr(E, "run_experiment", interrupted)
    out = tmp_path / "run"
    assert main(["run", "--problems", "1", "--out", str(out), "--no-progress"]) == 130
    line = _one_error_line(capsys)
    assert line == f"smcscale: interrupted; rerun the same command to resume from {out}"


def test_cli_usage_errors_are_one_line_with_exit_code_2(capsys):
    from smcscale.workflow.cli import main

    for argv, needle in [(["run", "--budgets", "x"], "invalid int value: 'x'"), (["bogus"], "invalid choice: 'bogus'"),
                         (["--shard", "1/2", "--nope"], "unrecognized arguments: --nope")]:
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
        line = _one_error_line(capsys)
        assert needle in line and line.startswith("smcscale") and "--help" in line
