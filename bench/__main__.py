"""``python -m bench [--recipe R] [--quick] [--sections artifacts,ceiling] [--out artifacts/bench]`` (from the repo root):
measure the recipe's artifacts and their peers, write ``<out>/<YYYY-MM-DD>[-quick]/report.md`` (+ report.json, plots)
and print that folder. ``--readme-only`` (and ``--update-readme`` after a full run) copies the latest full report to
``docs/bench/<date>/`` and rewrites the README's bench section from it."""
from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # model and data come from installed packages; never wait on a hub
PUBLISHED = Path("docs/bench")  # full reports the README links to, kept in the repository


# what the report's numbers depend on: every runtime and quantizer measured in it
BENCH_PACKAGES = ("tailorfit", "torch", "transformers", "openvino", "nncf", "onnx", "onnxruntime", "onnxscript", "optimum-intel", "neural-compressor-pt", "torchao")


def _parser() -> argparse.ArgumentParser:
    from .sections import SECTIONS

    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", type=Path, help="default: recipes/default.yaml (with --quick: recipes/quick.yaml)")
    p.add_argument("--quick", action="store_true", help="the quick recipe and fewer rounds: a few minutes once its run is cached")
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated, from: {', '.join(SECTIONS)}")
    p.add_argument("--out", type=Path, default=Path("artifacts/bench"), help="bench folder: dated reports, peer cache")
    p.add_argument("--runs", type=Path, default=Path("artifacts"), help="where tailorfit run folders are (tailorfit run --out)")
    p.add_argument("--update-readme", action="store_true", help="after a full run, rewrite README.md's bench section")
    p.add_argument("--readme-only", action="store_true", help="only rewrite README.md's bench section from the latest full report")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from tailorfit.pipeline.console import setup_logging

    log = setup_logging()
    if args.readme_only:
        return _readme(args.out, log)
    from tailorfit.pipeline.cache import package_versions
    from tailorfit.pipeline.host import host_info

    from .context import FULL, QUICK, BenchContext
    from .peers import PACKAGES as PEER_PACKAGES

    from .report import QUICK_SUFFIX, write_report
    from .sections import run_section

    recipe = args.recipe or Path("recipes/quick.yaml" if args.quick else "recipes/default.yaml")
    date = dt.date.today().isoformat()
    final = args.out / (date + (QUICK_SUFFIX if args.quick else ""))
    partial = final.with_name(f".{final.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    ctx = BenchContext(recipe, QUICK if args.quick else FULL, partial, args.out, args.runs)
    t0 = time.perf_counter()
    sections = {}
    for name in [s.strip() for s in args.sections.split(",") if s.strip()]:
        log.info("bench section: %s", name)
        sections[name] = run_section(name, ctx)
    meta = {
        "date": date, "quick": args.quick, "recipe": str(recipe), "run_dir": str(ctx.run.run_dir), "threads": ctx.threads,
        "command": "python -m bench" + "".join(f" {a}" for a in (argv if argv is not None else sys.argv[1:])),
        "seconds": time.perf_counter() - t0, "host": host_info(),
        "packages": package_versions(tuple(dict.fromkeys((*BENCH_PACKAGES, *PEER_PACKAGES)))),
    }
    folder = write_report(partial, final, meta, sections)
    print(folder.resolve())
    if args.update_readme and not args.quick:
        return _readme(args.out, log)
    return 0


def _readme(out: Path, log) -> int:
    """Copy the latest full report to docs/bench/<date>/ (committed, unlike artifacts/) and rewrite the README's
    bench section from that copy, so the README's link to the whole report works wherever the repo is read."""
    from tailorfit.pipeline.cache import swap_in_folder

    from .report import latest_report, update_readme

    report = latest_report(out)
    if report is None:
        log.error("no full bench report under %s: run `python -m bench` first", out)
        return 2
    published = PUBLISHED / report.parent.name
    if published.resolve() != report.parent.resolve():
        partial = published.with_name(f".{published.name}.partial")
        shutil.rmtree(partial, ignore_errors=True)
        shutil.copytree(report.parent, partial)
        swap_in_folder(partial, published)
    if not update_readme(Path("README.md"), published / "report.json"):
        log.error("README.md has no <!-- bench:begin --> / <!-- bench:end --> markers: add them where the section goes")
        return 2
    log.info("README.md bench section rewritten from %s", published)
    return 0


if __name__ == "__main__":
    sys.exit(main())
