"""``gemdepth experiment CONFIG``: train and evaluate every variant × seed of an experiment file,
then write ``results.json``, ``results.md`` and the plots into its output folder.

One run at a time in this process (``threads`` torch threads each), or one cell per job with
``--only VARIANT/seedK`` / ``--index N`` (a SLURM array: ``--index $SLURM_ARRAY_TASK_ID``; render
the corpora first with ``--prepare``, make the table at the end with ``--report``).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from gemdepth.experiment.config import Cell, Experiment

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gemdepth experiment", description=__doc__.split("\n\n")[0])
    p.add_argument("config", type=Path, help="experiment file, e.g. experiments/table4.yaml")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: the file's `output`, "
                   "else runs/<file name>)")
    pick = p.add_mutually_exclusive_group()
    pick.add_argument("--only", action="append", default=None, metavar="VARIANT[/seedK]",
                      help="run only this cell (or every seed of this variant); repeatable")
    pick.add_argument("--index", type=int, default=None, metavar="N",
                      help="run only cell N of --list (0-based; SLURM: $SLURM_ARRAY_TASK_ID)")
    p.add_argument("--list", action="store_true", help="print the cells (index, VARIANT/seedK, state) and exit")
    p.add_argument("--prepare", action="store_true", help="render the corpora and exit (before an array job)")
    p.add_argument("--report", action="store_true", help="only (re)write the table and plots from finished runs")
    p.add_argument("--no-report", action="store_true", help="do not write the table and plots after the runs")
    p.add_argument("--workers", type=int, default=1, help="processes rendering the corpora (default 1)")
    return p


def _select(exp: Experiment, args: argparse.Namespace, parser: argparse.ArgumentParser) -> list[Cell]:
    """The cells ``--index`` / ``--only`` pick (all cells without them), in the order asked."""
    cells = exp.cells()
    if args.index is not None:
        if not 0 <= args.index < len(cells):
            parser.error(f"--index {args.index} is outside the grid of {exp.path} (0..{len(cells) - 1}; see --list)")
        return [cells[args.index]]
    if args.only:
        chosen = []
        for spec in args.only:
            variant, _, seed = spec.partition("/")
            if variant not in exp.variants:
                parser.error(f"--only {spec}: no variant {variant!r} in {exp.path} (variants: {', '.join(exp.variants)})")
            match = [c for c in cells if c.variant == variant and (not seed or f"seed{c.seed}" == seed
                                                                    or str(c.seed) == seed)]
            if not match:
                parser.error(f"--only {spec}: no seed {seed!r} in {exp.path} (seeds: {exp.seeds}; write seed0 or 0)")
            chosen += [c for c in match if c not in chosen]
        return chosen
    return cells


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # idle OpenMP threads sleep (shared CPUs)
    parser = _parser()
    args = parser.parse_args(list(argv) if argv is not None else None)
    from gemdepth.experiment.config import ExperimentConfigError, load_experiment

    try:
        exp = load_experiment(args.config, output=args.out)
    except ExperimentConfigError as exc:
        print(f"gemdepth experiment: {exc}", file=sys.stderr)
        return 2
    os.environ.setdefault("OMP_NUM_THREADS", str(exp.threads))
    from gemdepth.experiment import report
    from gemdepth.experiment.runner import (
        LOCK_FILE,
        RESULT_FILE,
        RunBusy,
        RunFailed,
        SweepInterrupted,
        install_interrupt_handler,
        prepare_corpora,
        run_cell,
        run_dir,
        set_threads,
    )

    if args.list:
        for i, cell in enumerate(exp.cells()):
            run = run_dir(exp, cell)
            state = ("done" if (run / RESULT_FILE).is_file() else "running" if (run / LOCK_FILE).is_file()
                     else "partial" if (run / "checkpoints" / "last.ckpt").is_file() else "todo")
            print(f"{i:4d}  {cell.key:<32} {state}")
        return 0
    if args.report:
        paths = report.write_report(exp)
        print("\n".join(f"wrote {p}" for p in paths))
        return 0
    set_threads(exp.threads)
    install_interrupt_handler()
    prepare_corpora(exp, workers=args.workers)
    if args.prepare:
        return 0
    cells = _select(exp, args, parser)
    failed = []
    for n, cell in enumerate(cells, 1):
        print(f"[experiment] run {n}/{len(cells)}: {cell.key}", flush=True)
        try:
            run_cell(exp, cell)
        except RunFailed as exc:
            print(f"gemdepth experiment: {exc}", file=sys.stderr)
            failed.append(cell.key)
        except RunBusy as exc:
            print(f"[experiment] {exc}", flush=True)
        except (SweepInterrupted, KeyboardInterrupt) as exc:
            print(f"gemdepth experiment: stopped ({exc or 'interrupted'}); finished runs are kept, re-run the "
                  "same command to resume", file=sys.stderr)
            return 130
    if not args.no_report:
        paths = report.write_report(exp)
        print("\n".join(f"wrote {p}" for p in paths))
    if failed:
        print(f"gemdepth experiment: {len(failed)} run(s) failed: {', '.join(failed)}; re-run the same command "
              "to resume them", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
