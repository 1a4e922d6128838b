"""``combprune study``: run a TOML study with a progress bar, or redraw a report from records.

    combprune study CONFIG.toml [--executor process|serial|ray] [--workers N] [--output F.jsonl]
                                [--report-dir DIR] [--no-progress] [--dry-run]
    combprune study --report RESULTS.jsonl [--report-dir DIR] [--group-by p] [--gap-tol 1e-6]

The first form runs (or resumes) the study, then writes its report and prints the summary
table; the second only reads records. Also available as ``python -m combprune.study``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Sequence

__all__ = ["add_arguments", "run", "main"]


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``study`` arguments to ``parser`` (a subcommand parser of ``combprune``)."""
    parser.add_argument("config", nargs="?", help="study configuration (TOML); see docs/studies.md")
    parser.add_argument("--report", metavar="RESULTS.jsonl", help="only redraw tables and plots from saved records")
    parser.add_argument("--report-dir", metavar="DIR", help="where to write the report (default: from the config, or RESULTS_report/)")
    parser.add_argument("--executor", choices=("process", "serial", "ray"), help="override study.executor")
    parser.add_argument("--workers", type=int, help="override study.workers")
    parser.add_argument("--output", metavar="F.jsonl", help="override study.output")
    parser.add_argument("--group-by", action="append", default=None, metavar="FIELD",
                        help="extra summary column, e.g. p (repeatable; default: report.group_by of the config)")
    parser.add_argument("--gap-tol", type=float, help="relative gap counted as solved (--report only; default 1e-6)")
    parser.add_argument("--study", dest="study_name", help="with --report: only the records of this study name")
    parser.add_argument("--no-plots", action="store_true", help="tables and CSV only")
    parser.add_argument("--dry-run", action="store_true", help="validate the config and list the solves; run nothing")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def _print_summary(results, by: Sequence[str], paths: dict[str, str]) -> None:
    print(results.summary_table(by))
    for warning in results.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    for what, path in paths.items():
        print(f"{what}: {path}")


def _print_plan(config) -> None:
    from .store import RecordStore

    study = config.study
    tasks = study.tasks()
    store = RecordStore(study.output) if study.output and os.path.exists(study.output) else None
    done = sum(t.key in store for t in tasks) if store is not None else 0
    print(f"study {study.name!r}: {len(study.instances)} instances x {len(study.runs)} solver runs -> "
          f"{len(tasks)} solves ({done} already in {study.output})")
    for run in study.runs:
        n = sum(t.head["label"] == run.label for t in tasks)
        opts = f" options={run.options}" if run.options else ""
        print(f"  {run.label}: solver={run.solver}{opts}, {n} solves")


def run(args: argparse.Namespace) -> int:
    """Execute the parsed ``study`` arguments; returns the exit status."""
    from .config import ConfigError, load_config
    from .report import load_results

    if args.workers is not None and args.workers < 1:
        print(f"error: --workers: expected >= 1, got {args.workers}", file=sys.stderr)
        return 2
    if args.report:
        if args.config:
            print("error: give either CONFIG.toml or --report RESULTS.jsonl, not both", file=sys.stderr)
            return 2
        try:
            results = load_results(args.report, gap_tol=1e-6 if args.gap_tol is None else args.gap_tol, study=args.study_name)
        except (OSError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        if not len(results):
            print(f"error: {args.report}: no records", file=sys.stderr)
            return 2
        by = args.group_by or []
        stem = args.report[: -len(".jsonl")] if args.report.endswith(".jsonl") else args.report
        out_dir = args.report_dir or stem + "_report"
        if args.no_plots:
            os.makedirs(out_dir, exist_ok=True)
            paths = {
                "summary_csv": results.summary_to_csv(os.path.join(out_dir, "study_summary.csv"), by),
                "records_csv": results.to_csv(os.path.join(out_dir, "study_records.csv")),
            }
        else:
            paths = results.report(out_dir, by=by)
        _print_summary(results, by, paths)
        return 0
    if not args.config:
        print("error: give a CONFIG.toml to run, or --report RESULTS.jsonl", file=sys.stderr)
        return 2
    try:
        config = load_config(args.config, executor=args.executor, workers=args.workers, output=args.output)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.dry_run:
        _print_plan(config)
        return 0
    if args.report_dir:
        config.report_dir = args.report_dir
    if args.group_by:
        config.group_by = args.group_by
    if args.no_plots:
        config.plots = False
    results, paths = config.run(progress=not args.no_progress)
    _print_summary(results, config.group_by, paths)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Stand-alone entry point (``python -m combprune.study``)."""
    parser = argparse.ArgumentParser(prog="combprune study", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    args = parser.parse_args(argv)
    if args.verbose:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return run(args)
