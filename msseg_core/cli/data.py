"""msseg-data: your own dataset folder (images/, labels/, classes.yaml, train.txt / val.txt).

    msseg-data check data/my_robot            # every problem, one line each naming the file; class frequencies
    msseg-data check data/my_robot --json report.json

`check` exits 0 when the folder trains as it is, 1 when anything is wrong (each problem is an `error:`
line; `warning:` lines do not fail it), 2 on a usage error. It reads every image and label and writes
nothing but the --json report. The layout and classes.yaml: docs/own_data.md.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from msseg_core.data.folder import check_folder
from msseg_core.io import write_json_atomic


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="msseg-data", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("check", help="report what is wrong with a folder dataset, and its class frequencies")
    c.add_argument("folder", help="the dataset folder (holding images/, labels/, classes.yaml)")
    c.add_argument("--json", default=None, metavar="PATH", help="also write the report as JSON (atomically)")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    report = check_folder(args.folder)
    for line in report.lines():
        print(line)
    if args.json:
        try:
            write_json_atomic(args.json, report.to_dict())
        except OSError as exc:
            print(f"msseg-data check: error: cannot write {args.json}: {exc}", file=sys.stderr)
            return 2
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
