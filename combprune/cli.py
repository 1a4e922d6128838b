"""The ``combprune`` command line.

Subcommands are declared in :data:`COMMANDS` (name -> :class:`Command`): each has a
``configure(parser)`` that adds its arguments and a ``run(args) -> int`` that does the work and
returns the exit status. Adding a subcommand means writing those two functions and one
``add_command(...)`` line; :func:`main` needs no change.

    combprune solvers [--json] [--problem KIND]
    combprune solve FILE --solver NAME [--time-limit S] [--seed N] [--option key=value ...]
                    [--json] [--save-x out.npy]
    combprune generate KIND OUT [--seed N] [--param key=value ...]
    combprune demo [--plot PNG] [--quick] [--seed N] [--json] | --instances [--time-limit S]
    combprune study CONFIG.toml [--executor E] [--workers N] [--dry-run] | --report RESULTS.jsonl
    combprune pipeline CONFIG.toml [--json] [--progress]

Errors a user can cause (bad file, unknown solver, bad option, missing extra) print one line
``combprune: error: ...`` on stderr and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from typing import Any, Callable

from ._table import text_table

__all__ = ["Command", "COMMANDS", "add_command", "build_parser", "main", "parse_value", "parse_key_values"]


@dataclass(frozen=True)
class Command:
    """A subcommand: ``configure`` adds arguments to its parser, ``run`` executes it."""

    name: str
    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


COMMANDS: dict[str, Command] = {}


def add_command(name: str, help: str, configure: Callable[[argparse.ArgumentParser], None],
                run: Callable[[argparse.Namespace], int]) -> Command:
    """Register (or replace) subcommand ``name``."""
    cmd = Command(name, help, configure, run)
    COMMANDS[name] = cmd
    return cmd


class CLIError(Exception):
    """A user error: printed as one line, exit status 2."""


# --- value parsing ------------------------------------------------------------------------------

def parse_value(text: str) -> Any:
    """``key=value`` values: JSON where it parses (numbers, true/false/null, lists, dicts),
    ``none``/``None`` as None, ``True``/``False`` as bools, otherwise the string itself."""
    special = {"none": None, "None": None, "True": True, "False": False}
    if text in special:
        return special[text]
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_key_values(items: list[str] | None, what: str = "--option") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CLIError(f"{what}: expected key=value, got {item!r}")
        out[key.strip()] = parse_value(value)
    return out


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, default=str))


_PROBLEM_CLASSES = {"l0_regression": "L0Regression", "flop_nnz_ilp": "FlopNnzILP", "structured_miqp": "StructuredMIQP"}


# --- solvers ----------------------------------------------------------------------------------

def _configure_solvers(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print the table as JSON")
    p.add_argument("--problem", choices=sorted(_PROBLEM_CLASSES), help="only solvers of this formulation")
    p.add_argument("--options", metavar="NAME", help="list one solver's options: what each accepts, and its default")


def _run_solvers(args: argparse.Namespace) -> int:
    from combprune import problems
    from combprune.registry import get_solver, list_solvers

    if args.options:
        rows = get_solver(args.options).option_rows()
        if args.json:
            _print_json(rows)
        else:
            print(text_table(["option", "accepts", "default"], [[r["option"], r["accepts"], repr(r["default"])] for r in rows]))
        return 0
    rows = list_solvers(getattr(problems, _PROBLEM_CLASSES[args.problem]) if args.problem else None)
    if args.json:
        _print_json(rows)
        return 0
    body = [[r["name"], ", ".join(r["problems"]), r["kind"], "yes" if r["available"] else "no",
             r["extra"] or "-", r["description"]] for r in rows]
    print(text_table(["name", "formulations", "kind", "available", "extra", "description"], body))
    missing = sorted({r["extra"] for r in rows if not r["available"] and r["extra"]})
    if missing:
        print("\nmissing: " + ", ".join(f"pip install combprune[{e}]" for e in missing))
    return 0


# --- solve ------------------------------------------------------------------------------------

def _configure_solve(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="problem file written by Problem.save (.npz)")
    p.add_argument("--solver", help="registered solver name (default: the formulation's default)")
    p.add_argument("--time-limit", type=float, default=None, help="wall-clock seconds")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--option", "-o", action="append", metavar="KEY=VALUE",
                   help="solver option (repeatable); values parsed as JSON where possible")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--save-x", metavar="OUT.npy", help="save the solution x as a NumPy file")


def _run_solve(args: argparse.Namespace) -> int:
    import numpy as np

    from combprune import backend
    from combprune.api import solve
    from combprune.problems import load_problem

    try:
        problem = load_problem(args.file)
    except (OSError, ValueError) as exc:
        raise CLIError(f"file: cannot read {args.file!r}: {exc}") from exc
    options = parse_key_values(args.option)
    if args.save_x:
        parent = os.path.dirname(os.path.abspath(args.save_x))
        if not os.path.isdir(parent):
            raise CLIError(f"--save-x: directory {parent!r} does not exist")
    result = solve(problem, args.solver, time_limit=args.time_limit, seed=args.seed, **options)
    if args.save_x:
        np.save(args.save_x, backend.to_numpy(result.x))
    violations = problem.check(result.x) if result.x is not None else []
    if args.json:
        out = result.to_dict()
        out["problem"] = repr(problem)
        out["violations"] = violations
        _print_json(out)
        return 0
    print(f"problem:    {problem!r}")
    for key in ("solver", "status", "objective", "bound", "gap", "nnz", "time", "iterations"):
        value = getattr(result, key)
        print(f"{key + ':':<11} {value.value if hasattr(value, 'value') else value}")
    print(f"{'feasible:':<11} {'yes' if not violations else '; '.join(violations)}")
    return 0


# --- generate -----------------------------------------------------------------------------------

def _configure_generate(p: argparse.ArgumentParser) -> None:
    p.add_argument("kind", choices=sorted(_PROBLEM_CLASSES), help="formulation")
    p.add_argument("out", help="output file (.npz)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--param", "-p", action="append", metavar="KEY=VALUE",
                   help="generator parameter (e.g. n=50 p=200 k=20 for l0_regression; repeatable)")


def _run_generate(args: argparse.Namespace) -> int:
    from combprune.problems import random_problem

    defaults = {"l0_regression": {"n": 20, "p": 10, "k": 4}, "flop_nnz_ilp": {"p": 20}, "structured_miqp": {"d": 10, "m": 4}}
    params = {**defaults[args.kind], **parse_key_values(args.param, "--param")}
    try:
        problem = random_problem(args.kind, seed=args.seed, **params)
    except TypeError as exc:  # an unknown parameter name
        raise CLIError(f"--param: {exc}") from None
    problem.save(args.out)
    print(f"wrote {problem!r} to {args.out}")
    return 0


# --- demo -------------------------------------------------------------------------------------

def _configure_demo(p: argparse.ArgumentParser) -> None:
    p.add_argument("--instances", action="store_true",
                   help="the optimality-gap demo on random instances of the three formulations")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--time-limit", type=float, default=5.0, help="per solve (seconds)")
    p.add_argument("--solver", action="append", help="only these solvers (repeatable)")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    from combprune.demo import add_arguments

    add_arguments(p, common=False)  # the network demo (default): combprune/demo.py


def run_instances_demo(args: argparse.Namespace) -> int:
    """``combprune demo --instances``: the optimality-gap table (see :mod:`combprune.gap_demo`)."""
    from combprune.gap_demo import format_gap_table, run_gap_demo

    rows = run_gap_demo(args.seed, time_limit=args.time_limit, solvers=args.solver)
    if args.json:
        _print_json([r.to_dict() for r in rows])
    else:
        print(format_gap_table(rows))
    return 0


def _run_demo(args: argparse.Namespace) -> int:
    if args.instances:
        return run_instances_demo(args)
    from combprune.demo import run_from_args

    _, text = run_from_args(args)
    print(text)
    return 0


add_command("solvers", "list the registered solvers", _configure_solvers, _run_solvers)
add_command("solve", "solve a saved problem file", _configure_solve, _run_solve)
add_command("generate", "write a seeded random instance to a file", _configure_generate, _run_generate)
add_command("demo", "run the demo (networks trained on sklearn digits, pruned by each method; --instances: optimality gaps on random instances)", _configure_demo, _run_demo)

def _configure_pipeline(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="TOML configuration ([data], [model], [pipeline]; see examples/pipeline_mlp.toml)")
    p.add_argument("--json", action="store_true", help="print the result (with the per-epoch history) as JSON")
    p.add_argument("--progress", action="store_true", help="show progress bars")


def _run_pipeline(args: argparse.Namespace) -> int:
    from combprune.torch.pipeline_config import run_pipeline_config

    out = run_pipeline_config(args.config, progress=args.progress)
    if args.json:
        _print_json(out)
        return 0
    data = out["config"]["data"]
    print(f"combprune pipeline {args.config}: {data['dataset']}, {out['train_samples']} training / {out['test_samples']} held-out samples")
    print(f"density (fraction of prunable weights kept) {out['density']:.4f}; held-out accuracy {100 * out['test_accuracy']:.2f} %")
    return 0


add_command("pipeline", "run the end-to-end sparse-training pipeline from a TOML config", _configure_pipeline, _run_pipeline)

from combprune.study.cli import add_arguments as _configure_study, run as _run_study  # noqa: E402

add_command("study", "run a study (instances x solvers x seeds) from a TOML config, or --report saved records", _configure_study, _run_study)


# --- entry point --------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    from combprune import __version__

    parser = argparse.ArgumentParser(prog="combprune", description="Neural-network pruning as mathematical optimisation.")
    parser.add_argument("--version", action="version", version=f"combprune {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="log more (-v info, -vv debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for cmd in COMMANDS.values():
        p = sub.add_parser(cmd.name, help=cmd.help, description=cmd.help)
        cmd.configure(p)
        p.set_defaults(_run=cmd.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 success, 2 usage / input error)."""
    import logging

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.verbose:
        logging.basicConfig(level=logging.DEBUG if args.verbose > 1 else logging.INFO,
                            format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args._run(args) or 0)
    except (CLIError, ValueError, TypeError, ImportError) as exc:
        print(f"combprune: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
