"""Experiment runner: JSONL store, crash/resume, config validation, summary statistics,
and the CLI end to end on the embedded SmolLM2 (killed mid-way and resumed)."""

import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from smcscale.workflow import experiment as E


def _units(n):
    return [{"unit": f"p{i}|m|1|0", "problem": f"p{i}", "method": "m", "kind": "pf", "budget": 1, "seed": 0}
            for i in range(n)]


def test_run_units_resumes_after_a_crash_without_redoing_or_losing_work(tmp_path):
    path = tmp_path / "results.jsonl"
    calls = []

    def solve(u, crash_at=None):
        if crash_at is not None and len(calls) == crash_at:
            raise KeyboardInterrupt("simulated kill")
        calls.append(u["unit"])
        return {"value": int(u["problem"][1:]) ** 2}

    units = _units(6)
    with pytest.raises(KeyboardInterrupt):
        E.run_units(units, lambda u: solve(u, crash_at=3), E.ResultStore(path), progress=False)
    assert len(path.read_text().splitlines()) == 3
    recs = E.run_units(units, solve, E.ResultStore(path), progress=False)
    assert calls == [u["unit"] for u in units]  # each unit solved exactly once over both runs
    assert [r["value"] for r in recs] == [i * i for i in range(6)]
    lines = path.read_text().splitlines()
    assert len(lines) == 6 and len({json.loads(x)["unit"] for x in lines}) == 6
    # a third run has nothing to do
    E.run_units(units, lambda u: pytest.fail("re-solved a finished unit"), E.ResultStore(path), progress=False)


def test_store_cuts_a_torn_last_line_and_rejects_corruption_and_duplicates(tmp_path):
    path = tmp_path / "results.jsonl"
    good = json.dumps({"unit": "a", "x": 1}) + "\n"
    path.write_text(good + '{"unit": "b", "x"')  # killed in the middle of a write
    with pytest.warns(UserWarning, match="torn last line"):
        store = E.ResultStore(path)
    assert store.done == {"a"} and path.read_text() == good
    store.append({"unit": "b", "x": 2})
    assert E.ResultStore(path).done == {"a", "b"}
    with pytest.raises(ValueError, match="already recorded"):
        store.append({"unit": "a", "x": 3})
    path.write_text(good + "not json\n" + good)
    with pytest.raises(ValueError, match=r"results.jsonl:2: corrupt record"):
        E.ResultStore(path)
    path.write_text(good + good)
    with pytest.raises(ValueError, match="duplicate record for unit 'a'"):
        E.ResultStore(path)


def test_wilson_interval_matches_closed_form():
    lo, hi = E.wilson_interval(7, 10)
    # Wilson (1927) 95% interval for 7/10: centre (p + z^2/2n)/(1 + z^2/n)
    z = 1.959964
    p, n = 0.7, 10
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    assert lo == pytest.approx(centre - half) and hi == pytest.approx(centre + half)
    assert lo == pytest.approx(0.3968, abs=1e-4) and hi == pytest.approx(0.8922, abs=1e-4)
    assert E.wilson_interval(0, 5)[0] == 0.0 and E.wilson_interval(5, 5)[1] == 1.0
    assert all(math.isnan(v) for v in E.wilson_interval(0, 0))


def _record(problem, method, kind, budget, correct, tokens):
    return {"unit": E.unit_id(problem, method, budget, 0), "problem": problem, "method": method, "kind": kind,
            "budget": budget, "seed": 0, "correct": correct, "wall_time_s": 1.0,
            "budget_counters": {"generated_tokens": tokens, "lm_forward_tokens": 2 * tokens}}


def test_summary_counts_every_rule_of_shared_generations_and_plots(tmp_path):
    recs = [
        _record("p0", "ind", "independent", 4, {"best_of_n": True, "weighted_best_of_n": False, "majority": True}, 100),
        _record("p1", "ind", "independent", 4, {"best_of_n": True, "weighted_best_of_n": True, "majority": False}, 300),
        _record("p0", "pf", "pf", 4, {"pf": False}, 50),
        _record("p1", "pf", "pf", 4, {"pf": True}, 70),
        _record("p0", "g", "greedy", 1, {"g": True}, 10),
    ]
    cfg = E.ExperimentConfig(methods=[{"name": "pf", "kind": "pf"}, {"name": "ind", "kind": "independent"},
                                      {"name": "g", "kind": "greedy"}])
    s = E.summarize(recs, cfg)
    rows = {(r["method"], r["budget"]): r for r in s["rows"]}
    assert [r["method"] for r in s["rows"]] == ["pf", "best_of_n", "weighted_best_of_n", "majority", "g"]
    assert rows[("best_of_n", 4)]["accuracy"] == 1.0 and rows[("majority", 4)]["correct"] == 1
    assert rows[("pf", 4)]["mean_generated_tokens"] == 60 and rows[("pf", 4)]["mean_lm_forward_tokens"] == 120
    assert rows[("g", 1)]["n"] == 1
    table = E.format_table(s)
    assert table.splitlines()[0].split()[:3] == ["method", "N", "acc"] and "weighted_best_of_n" in table
    png = E.plot_accuracy_vs_budget(s, tmp_path / "acc.png")
    assert os.path.getsize(png) > 10_000


def test_config_validation_and_loading(tmp_path):
    with pytest.raises(ValueError, match="unknown method kind 'bogus'"):
        E.MethodSpec("x", "bogus")
    with pytest.raises(ValueError, match="at least one method"):
        E.ExperimentConfig(methods=())
    with pytest.raises(ValueError, match="method names must be unique"):
        E.ExperimentConfig(methods=[{"name": "a", "kind": "pf"}, {"name": "a", "kind": "beam"}])
    with pytest.raises(ValueError, match="budgets must be positive"):
        E.ExperimentConfig(methods=[{"name": "a", "kind": "pf"}], budgets=(0,))
    with pytest.raises(ValueError, match="temperature"):
        E.ExperimentConfig(methods=[{"name": "a", "kind": "pf"}], generation={"temperature": -1})
    p = tmp_path / "c.json"
    p.write_text(json.dumps({"methods": [{"name": "a", "kind": "pf"}], "budgets": [2], "colour": "red"}))
    with pytest.raises(ValueError, match=r"unknown config keys \['colour'\]"):
        E.load_config(p)
    t = tmp_path / "c.toml"
    t.write_text('split = "easy-dev"\nbudgets = [1, 2]\n[[methods]]\nname = "pg2"\nkind = "pg"\n'
                 '[methods.options]\niterations = 2\n')
    cfg = E.load_config(t)
    assert cfg.split == "easy-dev" and cfg.methods[0].options == {"iterations": 2} and cfg.budgets == (1, 2)
    # PG with 2 sweeps needs >= 4 generations; greedy runs once per problem
    cfg = E.ExperimentConfig(methods=[{"name": "pg2", "kind": "pg"}, {"name": "g", "kind": "greedy"}], budgets=(1, 2, 4))
    units = E.grid_units(cfg, E.grid_problems(cfg)[:1])
    assert sorted((u["method"], u["budget"]) for u in units) == [("g", 1), ("pg2", 4)]


def test_resuming_with_a_different_experiment_is_refused(tmp_path):
    cfg = E.ExperimentConfig(methods=[{"name": "a", "kind": "pf"}])
    E._check_resume(cfg, str(tmp_path))
    E._check_resume(E.ExperimentConfig(methods=[{"name": "a", "kind": "pf"}], budgets=(1, 2, 8)), str(tmp_path))
    other = E.ExperimentConfig(methods=[{"name": "a", "kind": "pf"}], generation={"temperature": 0.5})
    with pytest.raises(ValueError, match="differs in: generation"):
        E._check_resume(other, str(tmp_path))
    # adding a method is fine; changing an existing method's options is not
    more = E.ExperimentConfig(methods=[{"name": "a", "kind": "pf"}, {"name": "b", "kind": "beam"}])
    E._check_resume(more, str(tmp_path))
    changed = E.ExperimentConfig(methods=[{"name": "a", "kind": "pf", "options": {"mode": "paper"}}])
    with pytest.raises(ValueError, match="differs in: method 'a'"):
        E._check_resume(changed, str(tmp_path))


def test_unit_keys_are_deterministic_and_distinct():
    import jax

    u = {"problem": "p0", "method": "pf", "budget": 4, "seed": 0}
    k1, k2 = E._unit_key(u), E._unit_key(dict(u))
    assert np.array_equal(jax.random.key_data(k1), jax.random.key_data(k2))
    k3 = E._unit_key(dict(u, budget=8))
    assert not np.array_equal(jax.random.key_data(k1), jax.random.key_data(k3))


# ---------------------------------------------------------------------------------------
# end to end on the embedded model


def _cli(args, **kw):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "smcscale.workflow.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env, **kw)


@pytest.mark.slow
def test_cli_on_smollm2_killed_mid_way_resumes_without_loss_or_duplicates(tmp_path):
    from smcscale.text.tokenizer import ModelNotFoundError, locate_smollm2_gguf

    try:
        locate_smollm2_gguf()
    except ModelNotFoundError as e:
        pytest.skip(str(e))
    out = tmp_path / "run"
    args = ["run", "--problems", "2", "--budgets", "1", "2", "--max-new-tokens", "40", "--out", str(out), "--no-progress"]
    results = out / "results.jsonl"
    proc = _cli(args)
    t0 = time.time()
    while time.time() - t0 < 600:
        if results.exists() and len(results.read_text().splitlines()) >= 2:
            break
        if proc.poll() is not None:
            pytest.fail(f"the CLI ended before it could be killed:\n{proc.stdout.read()}")
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = results.read_text().splitlines()
    assert 2 <= len(before) < 8, "the run should have been killed mid-way"
    # resume: finishes the remaining units only
    proc = _cli(args)
    text, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, text
    after = results.read_text().splitlines()
    assert after[: len(before)] == before, "finished records were lost or rewritten"
    recs = [json.loads(x) for x in after]
    units = [r["unit"] for r in recs]
    assert len(units) == len(set(units)) == 8  # 2 problems x (pf, independent) x budgets (1, 2)
    assert f"{len(before)} already done" in text
    for r in recs:
        assert r["budget_counters"]["generations"] == r["budget"]
        assert 0 < r["budget_counters"]["generated_tokens"] <= 40 * r["budget"]
        assert set(r["correct"]) == ({"pf", "pf" + E.VOTE_SUFFIX} if r["method"] == "pf" else set(E.INDEPENDENT_RULES))
        if r["method"] == "pf":  # every final particle: answer, weight, score; the answer is the top weight's
            assert len(r["particles"]) == r["budget"] and sum(w for _, w, _ in r["particles"]) == pytest.approx(1)
            top = max(w for _, w, _ in r["particles"])
            assert r["answers"]["pf"] in [a for a, w, _ in r["particles"] if w >= top * (1 - 1e-6)]
    assert "best_of_n" in text and "95% CI" in text
    assert (out / "accuracy_vs_budget.png").stat().st_size > 10_000
    summary = json.load(open(out / "summary.json"))
    assert summary["num_records"] == 8 and {r["method"] for r in summary["rows"]} >= {"pf", "best_of_n", "majority"}


def test_subsampled_accuracy_matches_exact_enumeration():
    import itertools

    samples = [[5, 0.9], [7, 0.1], [7, 0.2], [5, 0.3], [7, 0.4], [7, 0.45]]
    for k in (1, 2, 3, 6):
        subsets = list(itertools.combinations(range(6), k))
        # best of k: the subset's top-scoring sample is right
        exact = np.mean([samples[max(c, key=lambda i: samples[i][1])][0] == 5 for c in subsets])
        est = E.subsampled_accuracy(samples, 5, k, "best_of_n", num_subsets=4000, seed=1)
        se = math.sqrt(exact * (1 - exact) / 4000)
        assert abs(est - exact) <= 5 * se + 1e-12, (k, est, exact)
    assert E.subsampled_accuracy(samples, 7, 6, "majority") == 1.0
    # weighted vote over all six: 5 has 1.2, 7 has 1.15
    assert E.subsampled_accuracy(samples, 5, 6, "weighted_best_of_n") == 1.0
    with pytest.raises(ValueError, match="k must be in"):
        E.subsampled_accuracy(samples, 5, 7)


def _shard(path, cfg, records):
    path.mkdir()
    E._check_resume(cfg, str(path))
    store = E.ResultStore(path / "results.jsonl")
    for r in records:
        store.append(r)


def test_merge_joins_shards_and_refuses_different_experiments(tmp_path, capsys):
    gen = {"max_new_tokens": 16}
    pf = {"name": "pf", "kind": "pf", "options": {"aggregation": "prod"}}
    ind = {"name": "ind", "kind": "independent"}
    a = E.ExperimentConfig(problems=2, methods=[pf], budgets=(1, 4), generation=gen)
    b = E.ExperimentConfig(problems=3, methods=[ind, pf], budgets=(8,), seeds=(1,), generation=gen)
    ra = [_record("p0", "pf", "pf", 4, {"pf": True}, 5), _record("p1", "pf", "pf", 4, {"pf": False}, 6)]
    rb = [_record("p2", "ind", "independent", 8, {"best_of_n": True}, 7), dict(ra[1], wall_time_s=9.0)]
    _shard(tmp_path / "a", a, ra)
    _shard(tmp_path / "b", b, rb)
    out = tmp_path / "merged"
    got = E.merge_experiments(out, [tmp_path / "a", tmp_path / "b"], echo=lambda s: None)
    assert got == {"added": 3, "duplicates": 1, "units": 3}  # p1|pf|4 is in both: the first copy is kept
    recs = {r["unit"]: r for r in E.ResultStore(out / "results.jsonl").records}
    assert set(recs) == {r["unit"] for r in ra + rb} and recs[ra[1]["unit"]]["wall_time_s"] == 1.0
    merged = E.ExperimentConfig(**json.loads((out / "config.json").read_text())["config"])
    assert [m.name for m in merged.methods] == ["pf", "ind"] and merged.problems == 3
    assert merged.budgets == (1, 4, 8) and merged.seeds == (0, 1) and merged.generation == gen
    assert E.merge_experiments(out, [tmp_path / "a", tmp_path / "b"], echo=lambda s: None)["added"] == 0
    # a shard with other generation settings, or a method of the same name with other options
    _shard(tmp_path / "c", dataclasses.replace(a, generation={"max_new_tokens": 32}), [])
    _shard(tmp_path / "d", dataclasses.replace(a, methods=[dict(pf, options={"aggregation": "min"})]), [])
    before = (out / "results.jsonl").read_bytes(), (out / "config.json").read_bytes()
    with pytest.raises(ValueError, match="differ in: generation"):
        E.merge_experiments(out, [tmp_path / "c"])
    with pytest.raises(ValueError, match="differ in: method 'pf'"):
        E.merge_experiments(out, [tmp_path / "d"])
    assert ((out / "results.jsonl").read_bytes(), (out / "config.json").read_bytes()) == before
    with pytest.raises(ValueError, match="not an experiment folder"):
        E.merge_experiments(out, [tmp_path / "nowhere"])
    # shards given as a count and as a list of problem ids: the union, in split order
    _shard(tmp_path / "e", dataclasses.replace(a, problems=["easy-test-0005", "easy-test-0000"]), [])
    E.merge_experiments(tmp_path / "m3", [tmp_path / "a", tmp_path / "e"], echo=lambda s: None)
    got = json.loads((tmp_path / "m3" / "config.json").read_text())["config"]["problems"]
    assert got == ["easy-test-0000", "easy-test-0001", "easy-test-0005"]
    # the command line, then the report of the merged folder
    from smcscale.workflow.cli import main

    assert main(["merge", str(tmp_path / "m2"), str(tmp_path / "b"), str(tmp_path / "a")]) == 0
    assert "3 units added, 1 already there; 3 units in all" in capsys.readouterr().out
    assert main(["report", str(tmp_path / "m2"), "--no-plot"]) == 0
    assert "best_of_n" in capsys.readouterr().out


def test_shards_partition_the_grid_stably_and_run_and_merge_from_the_cli(tmp_path, monkeypatch, capsys):
    pf = {"name": "pf", "kind": "pf"}
    ind = {"name": "ind", "kind": "independent"}
    cfg = E.ExperimentConfig(problems=12, methods=[pf, ind], budgets=(1, 2, 4), generation={"max_new_tokens": 8})
    units = E.grid_units(cfg, E.grid_problems(cfg))
    parts = [E.shard_units(units, (k, 3)) for k in (1, 2, 3)]
    ids = [[u["unit"] for u in p] for p in parts]
    assert sorted(sum(ids, [])) == sorted(u["unit"] for u in units)  # disjoint, and they cover the grid
    # a hash deal: each shard has about a third of the 72 units (binomial sd 4), of every method
    assert all(abs(len(p) - 24) <= 12 and {u["method"] for u in p} == {"pf", "ind"} for p in parts)
    # a unit stays in its shard when the grid grows
    more = E.grid_units(dataclasses.replace(cfg, problems=20, budgets=(1, 2, 4, 8)), E.grid_problems(cfg)[:12])
    for k in (1, 2, 3):
        assert set(ids[k - 1]) <= {u["unit"] for u in E.shard_units(more, (k, 3))}
    for bad in [(0, 3), (4, 3), (1,), ("a", 2), (1.5, 2), None]:
        with pytest.raises(ValueError, match="shard must be"):
            E.shard_units(units, bad)
    # the command line: two shards with a stand-in solver, then merged: the whole grid, once
    import smcscale.text.lm as lm_module
    from smcscale.workflow.cli import main

    monkeypatch.setattr(lm_module, "load_default_lm", lambda: None)
    monkeypatch.setattr(E, "_solver", lambda cfg, lm, problems: lambda u: _record(
        u["problem"], u["method"], u["kind"], u["budget"], {"pf": u["budget"] > 1}, 10))
    cfile = tmp_path / "grid.json"
    cfile.write_text(json.dumps({"problems": 3, "methods": [pf], "budgets": [1, 2], "generation": {"max_new_tokens": 8}}))
    common = ["run", "--config", str(cfile), "--no-progress", "--no-plot"]
    assert main([*common, "--shard", "1/2", "--out", str(tmp_path / "s1")]) == 0
    assert "shard 1/2: " in capsys.readouterr().out
    assert main([*common, "--shard", "2/2", "--out", str(tmp_path / "s2")]) == 0
    got = [{r["unit"] for r in E.ResultStore(tmp_path / s / "results.jsonl").records} for s in ("s1", "s2")]
    assert not got[0] & got[1] and len(got[0] | got[1]) == 6
    assert main(["merge", str(tmp_path / "all"), str(tmp_path / "s1"), str(tmp_path / "s2")]) == 0
    assert "6 units in all" in capsys.readouterr().out
    for bad in ["3/2", "1-2", "x/2", "0/2"]:
        assert main([*common, "--shard", bad, "--out", str(tmp_path / "bad")]) == 2
        assert "shard" in capsys.readouterr().err
    # a grid of one unit: one of two shards is empty, which is an error, not a silent no-op
    one = E.ExperimentConfig(problems=1, methods=[pf], budgets=(1,))
    empty = next(k for k in (1, 2) if not E.shard_units(E.grid_units(one, E.grid_problems(one)), (k, 2)))
    with pytest.raises(ValueError, match=f"shard {empty}/2 of this grid is empty"):
        E.run_experiment(one, tmp_path / "empty", shard=(empty, 2), echo=lambda s: None)
    assert not (tmp_path / "empty").exists()


def test_a_typo_in_a_method_option_is_refused_before_anything_is_written_or_loaded(tmp_path, monkeypatch, capsys):
    import smcscale.text.lm as lm_module
    from smcscale.workflow.cli import main

    loads = []
    monkeypatch.setattr(lm_module, "load_default_lm", lambda: loads.append(1))
    monkeypatch.setattr(E, "_solver", lambda cfg, lm, problems: lambda u: _record(
        u["problem"], u["method"], u["kind"], u["budget"], {"pf": True}, 10))
    grid = '[[methods]]\nname = "twisted"\nkind = "pf"\n[methods.options]\n{}\n'
    common = ["budgets = [1, 2]", "problems = 2", "[generation]", "max_new_tokens = 8"]
    cfile = tmp_path / "grid.toml"
    cfile.write_text("\n".join(common[:2]) + "\n" + grid.format('modee = "paper"') + "\n".join(common[2:]) + "\n")
    out = tmp_path / "run"
    args = ["run", "--config", str(cfile), "--out", str(out), "--no-progress", "--no-plot"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert str(cfile) in err and "method 'twisted'" in err and "unknown option 'modee'" in err
    assert "valid options: " in err and ", mode, " in err and "Traceback" not in err
    assert not out.exists() and not loads  # no folder to refuse the corrected config; no model loaded
    # the same through the library: MethodSpec refuses it, with the valid choices
    with pytest.raises(ValueError, match=r"unknown option 'beam_widht'; valid options: .*beam_width"):
        E.MethodSpec("b", "beam", {"beam_widht": 2})
    for bad, match in [({"budgets": [0]}, "'budgets' must be a non-empty list of positive integers"),
                       ({"budgets": 4}, "'budgets' must be"), ({"iterations": 0}, "'iterations' must be a positive"),
                       ({"record_history": True}, "unknown option 'record_history'")]:
        with pytest.raises(ValueError, match=match):
            E.MethodSpec("m", "pg" if "iterations" in bad else "independent", bad)
    assert E.method_options("greedy") == ("budgets",) and {"mode", "iterations"} <= set(E.method_options("pg"))
    # corrected, the same command runs
    cfile.write_text("\n".join(common[:2]) + "\n" + grid.format('mode = "paper"') + "\n".join(common[2:]) + "\n")
    assert main(args) == 0
    assert len(E.ResultStore(out / "results.jsonl").records) == 4 and loads == [1]


def test_a_run_that_fails_before_its_first_result_leaves_no_folder(tmp_path, monkeypatch):
    import smcscale.text.lm as lm_module

    def refuse(u):
        raise ValueError("mode must be 'twisted' or 'paper'")  # a value only the sampler checks

    monkeypatch.setattr(lm_module, "load_default_lm", lambda: None)
    monkeypatch.setattr(E, "_solver", lambda cfg, lm, problems: refuse)
    cfg = E.ExperimentConfig(problems=1, methods=[{"name": "pf", "kind": "pf", "options": {"mode": "bogus"}}],
                             budgets=(1,))
    with pytest.raises(ValueError, match="mode must be"):
        E.run_experiment(cfg, tmp_path / "new", progress=False, plot=False, echo=lambda s: None)
    assert not (tmp_path / "new").exists()
    # a folder that existed before is kept, whatever happens
    (tmp_path / "mine").mkdir()
    with pytest.raises(ValueError, match="mode must be"):
        E.run_experiment(cfg, tmp_path / "mine", progress=False, plot=False, echo=lambda s: None)
    assert (tmp_path / "mine" / "config.json").exists()
