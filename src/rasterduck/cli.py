"""The `rasterduck` command: build | sql | serve."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .build.api import BUILD_CONCURRENCY


def _progress_bar(stream=sys.stderr):  # type: ignore[no-untyped-def]
    """A one-line progress bar for header fetching (only drawn on a terminal)."""
    tty = stream.isatty()

    def show(done: int, total: int) -> None:
        if not tty or total == 0:
            return
        width = 30
        filled = int(width * done / total)
        stream.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} headers")
        if done == total:
            stream.write("\n")
        stream.flush()

    return show


def cmd_build(args: argparse.Namespace) -> int:
    """rasterduck build OUT.parquet HREF... [--stac FILE] [--bands ...]"""
    from .build.api import BuildReport, build_collection

    report = BuildReport()
    allow: bool | list[str] | None = True if args.allow_local else None
    bands = args.bands.split(",") if args.bands else None
    if args.stac:
        coll = build_collection(stac=args.stac, bands=bands, name=args.name or "", progress=_progress_bar(),
                                report=report, allow_local=allow, max_concurrent=args.max_concurrent)
    elif args.table:
        coll = build_collection(table=args.table, href_column=args.href_column, name=args.name or "",
                                progress=_progress_bar(), report=report, allow_local=allow,
                                max_concurrent=args.max_concurrent)
    else:
        if not args.hrefs:
            print("rasterduck build: give HREFs, --stac FILE or --table FILE", file=sys.stderr)
            return 2
        coll = build_collection(args.hrefs, bands=bands, name=args.name or "", progress=_progress_bar(),
                                report=report, allow_local=allow, max_concurrent=args.max_concurrent)
    coll.to_parquet(args.out)
    for f in report.failures:
        print(f"failed: {f.get('id')} {f.get('band')} {f.get('href')}: {f.get('message')}", file=sys.stderr)
    print(f"wrote {args.out}: {report.summary()}")
    return 0 if report.records else 1


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script."""
    parser = argparse.ArgumentParser(prog="rasterduck", description="COG pixels from SQL")
    sub = parser.add_subparsers(dest="command", required=True)

    b = sub.add_parser("build", help="build a collection (Parquet) from GeoTIFF hrefs, STAC items or a table")
    b.add_argument("out", help="output Parquet file")
    b.add_argument("hrefs", nargs="*", help="GeoTIFF URLs or paths (one record each)")
    b.add_argument("--stac", help="STAC Item / ItemCollection JSON file")
    b.add_argument("--table", help="records table (Parquet) to enrich with headers")
    b.add_argument("--href-column", help="with --table: the column holding the GeoTIFF href")
    b.add_argument("--bands", help="comma-separated band codes (hrefs: names of the samples in order; STAC: asset keys)")
    b.add_argument("--name", help="collection name")
    b.add_argument("--allow-local", action="store_true", help="allow local paths in STAC/table hrefs")
    b.add_argument("--max-concurrent", type=int, default=BUILD_CONCURRENCY,
                   help=f"header requests in flight (default {BUILD_CONCURRENCY})")
    b.set_defaults(func=cmd_build)

    try:
        from .duck import cli as duck_cli  # type: ignore[attr-defined]  # sql and serve subcommands
    except ImportError:
        duck_cli = None  # type: ignore[assignment]
    if duck_cli is not None:
        duck_cli.add_subcommands(sub)

    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
