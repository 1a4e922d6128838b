"""The ``combprune`` command line (``main(argv)`` in-process, one real subprocess)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from combprune import cli
from combprune.gap_demo import demo_instances, format_gap_table, run_gap_demo
from combprune.problems import load_problem, random_flop_ilp, random_l0_regression


def run(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_solvers_table_and_json(capsys):
    code, out, _ = run(capsys, "solvers")
    assert code == 0
    assert out.splitlines()[0].split()[:5] == ["name", "formulations", "kind", "available", "extra"]
    assert "highs" in out and "bruteforce" in out
    code, out, _ = run(capsys, "solvers", "--json", "--problem", "flop_nnz_ilp")
    rows = json.loads(out)
    names = {r["name"] for r in rows}
    assert {"highs", "pulp", "bruteforce"} <= names and "cvxpy" not in names


def test_solve_text_json_and_save_x(capsys, tmp_path):
    prob = random_flop_ilp(10, 4, seed=0)
    path = tmp_path / "ilp.npz"
    prob.save(path)
    code, out, _ = run(capsys, "solve", str(path), "--solver", "highs", "-o", "mip_rel_gap=1e-9")
    assert code == 0 and "status:     optimal" in out and "feasible:   yes" in out
    xfile = tmp_path / "x.npy"
    code, out, _ = run(capsys, "solve", str(path), "--solver", "bruteforce", "--json", "--save-x", str(xfile),
                       "--time-limit", "10", "--seed", "1")
    data = json.loads(out)
    assert code == 0 and data["status"] == "optimal" and data["violations"] == []
    x = np.load(xfile)
    assert prob.check(x) == [] and prob.objective(x) == pytest.approx(data["objective"])


def test_solve_errors(capsys, tmp_path):
    path = tmp_path / "l0.npz"
    random_l0_regression(4, 5, 2, seed=0).save(path)
    code, _, err = run(capsys, "solve", str(path), "--solver", "nope")
    assert code == 2 and "unknown solver 'nope'" in err
    code, _, err = run(capsys, "solve", str(path), "--solver", "highs")
    assert code == 2 and "solves FlopNnzILP" in err
    code, _, err = run(capsys, "solve", str(path), "--solver", "bruteforce", "-o", "bogus=1")
    assert code == 2 and "bogus" in err
    code, _, err = run(capsys, "solve", str(path), "--solver", "bruteforce", "-o", "novalue")
    assert code == 2 and "key=value" in err
    code, _, err = run(capsys, "solve", str(tmp_path / "missing.npz"), "--solver", "bruteforce")
    assert code == 2 and "file" in err
    code, _, err = run(capsys, "solve", str(path), "--solver", "bruteforce", "--time-limit", "-1")
    assert code == 2 and "time_limit" in err


def test_generate_round_trip(capsys, tmp_path):
    out_file = tmp_path / "g.npz"
    code, out, _ = run(capsys, "generate", "l0_regression", str(out_file), "--seed", "3", "-p", "n=6", "-p", "p=5",
                       "-p", "k=2", "-p", "design=correlated")
    assert code == 0 and "L0Regression" in out
    prob = load_problem(out_file)
    assert (prob.n, prob.p, prob.k) == (6, 5, 2)


def test_parse_value():
    assert cli.parse_value("1e-9") == 1e-9 and cli.parse_value("3") == 3
    assert cli.parse_value("true") is True and cli.parse_value("False") is False
    assert cli.parse_value("none") is None and cli.parse_value("ipm") == "ipm"
    assert cli.parse_value('{"limits/nodes": 5}') == {"limits/nodes": 5}


def test_add_command_extends_main(capsys, monkeypatch):
    monkeypatch.setattr(cli, "COMMANDS", dict(cli.COMMANDS))
    cli.add_command("hello", "say hello", lambda p: p.add_argument("--name", default="x"),
                    lambda a: print(f"hello {a.name}") or 0)
    code, out, _ = run(capsys, "hello", "--name", "y")
    assert code == 0 and out.strip() == "hello y"


def test_gap_demo_rows_and_table():
    # two instances with the fast exact solvers keep this test short; the full demo is run by main
    instances = [demo_instances(0)[0], demo_instances(0)[2]]
    rows = run_gap_demo(instances=instances, time_limit=5, solvers=["bruteforce", "highs", "pulp", "dual-sort", "chita"])
    assert {r.formulation for r in rows} == {"L0Regression", "FlopNnzILP"}
    for r in rows:
        assert r.error is None and r.gap is not None and r.gap >= -1e-9
        if r.kind == "exact":
            assert r.status == "optimal" and abs(r.gap) <= 1e-6
    table = format_gap_table(rows)
    assert "gap" in table.splitlines()[0] and "highs" in table


def test_demo_subprocess_json():
    proc = subprocess.run(
        [sys.executable, "-m", "combprune", "demo", "--instances", "--json", "--time-limit", "5",
         "--solver", "bruteforce", "--solver", "highs", "--solver", "group-magnitude"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert {r["formulation"] for r in rows} == {"L0Regression", "FlopNnzILP", "StructuredMIQP"}
    assert all(r["status"] != "error" for r in rows)
