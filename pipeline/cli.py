"""The ``tailorfit`` command line: run, passes, targets, inspect."""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import typing
from pathlib import Path

from rich.console import Console

from tailorfit.pipeline.errors import TailorfitError


def _cmd_run(args: argparse.Namespace) -> int:
    from tailorfit.pipeline.inspect_run import print_run, wide_console
    from tailorfit.pipeline.run_summary import run_summary
    from tailorfit.pipeline.runner import run_pipeline

    result = run_pipeline(args.recipe, out=args.out, cache_dir=args.cache, force=args.force, quiet=args.quiet, debug=args.debug, executor=args.executor)
    if not args.quiet:
        print_run(result.run_dir, wide_console(stderr=True))
    summary = run_summary(result.run_dir)
    print(json.dumps(summary, indent=1) if args.json else result.run_dir)
    return summary["exit_code"]


def _cmd_passes(args: argparse.Namespace) -> None:
    from tailorfit.pipeline.contract import all_passes

    console = Console()
    for name, cls in all_passes().items():
        ports = ", ".join(f"{p.name}: {'list of ' if p.many else ''}{p.kind.kind}" for p in cls.ports()) or "nothing"
        console.print(f"[bold]{name}[/bold]  ({ports}) -> {cls.produces().kind}")
        console.print(f"  {(cls.__module__ and sys.modules[cls.__module__].__doc__ or '').strip().splitlines()[0]}")
        for fname, field in cls.Config.model_fields.items():
            default = "required" if field.is_required() else repr(field.get_default(call_default_factory=True))
            kind = getattr(field.annotation, "__name__", None) or str(field.annotation).replace("typing.", "")
            desc = f" — {field.description}" if field.description else ""
            console.print(f"    {fname}: {kind} = {default}{desc}", markup=False, highlight=False)


def _cmd_targets(args: argparse.Namespace) -> None:
    from tailorfit.pipeline.plugins import targets

    for name, cls in targets().items():
        print(f"{name}\t{cls().describe()}\tfiles in {cls.folder}/")


def _cmd_inspect(args: argparse.Namespace) -> None:
    from tailorfit.pipeline.inspect_run import print_run, read_run

    if args.json:
        manifest, metrics = read_run(args.run_dir)
        searches = {f.parent.name: {**json.loads(f.read_text()), "front": json.loads((f.parent / "pareto.json").read_text())}
                    for f in sorted(Path(args.run_dir, "search").glob("*/history.json"))}
        print(json.dumps({"manifest": manifest, "metrics": metrics, "searches": searches}, indent=2))
    else:
        print_run(args.run_dir)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--quiet", action="store_true", help="warnings and errors only")
    common.add_argument("--debug", action="store_true", help="verbose logs and full tracebacks")
    p = argparse.ArgumentParser(prog="tailorfit", description="Search, quantize, lower and package transformers for a hardware target.")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", parents=[common], help="run a recipe (default: the embedded MiniLM / Rotten Tomatoes job)")
    run.add_argument("recipe", nargs="?", help="YAML recipe; omitted = the embedded default")
    run.add_argument("--out", default="artifacts", help="output root; the run goes to OUT/<recipe name> (default: artifacts)")
    run.add_argument("--cache", default=None, help="cache folder (default: $TAILORFIT_CACHE or OUT/.cache)")
    run.add_argument("--force", action="append", default=[], metavar="PASS", help="re-run this step or pass and everything after it (repeatable)")
    run.add_argument("--executor", default=None, metavar="SPEC",
                     help="local, local:N (N worker processes), ray or ray://HOST:PORT: where parallel work (search candidates, the steps after the search) runs (default: the recipe's, else ray when $RAY_ADDRESS is set, else local)")
    run.add_argument("--json", action="store_true", help="print one JSON summary on stdout instead of the run folder (for pipelines)")
    run.set_defaults(func=_cmd_run)
    sub.add_parser("passes", parents=[common], help="list passes with their config fields").set_defaults(func=_cmd_passes)
    sub.add_parser("targets", parents=[common], help="list deployment targets").set_defaults(func=_cmd_targets)
    ins = sub.add_parser("inspect", parents=[common], help="summarise a run directory")
    ins.add_argument("run_dir")
    ins.add_argument("--json", action="store_true", help="print the manifest and metrics as JSON (for scripts)")
    ins.set_defaults(func=_cmd_inspect)
    return p


def main(argv: typing.Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # a polite kill (a CI timeout, `kill`) unwinds like Ctrl-C: scratch folders go, the cache's partial folders stay
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        code = args.func(args)
    except TailorfitError as err:
        if args.debug:
            raise
        print(f"tailorfit: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tailorfit: interrupted; finished steps are cached and a re-run resumes from them", file=sys.stderr)
        return 130
    except Exception as exc:  # an unexpected failure still ends in one line unless --debug
        if args.debug:
            raise
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        print(f"tailorfit: error: {type(exc).__name__}: {first} — re-run with --debug for the traceback", file=sys.stderr)
        return 1
    return code or 0


if __name__ == "__main__":
    sys.exit(main())
