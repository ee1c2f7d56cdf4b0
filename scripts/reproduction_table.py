"""Regenerate the README's "Reproduction" table from results/*.json.

    python scripts/reproduction_table.py            # print the table
    python scripts/reproduction_table.py --write    # replace it in README.md (between the markers)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from titn_edu.results import load_results, reproduction_table

ROOT = Path(__file__).resolve().parent.parent
START, END = "<!-- reproduction:start -->", "<!-- reproduction:end -->"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", default=str(ROOT / "results"), help="folder of run records")
    parser.add_argument("--readme", default=str(ROOT / "README.md"))
    parser.add_argument("--write", action="store_true", help="rewrite the table inside the README")
    args = parser.parse_args(argv)
    table = reproduction_table(load_results(args.results))
    if not args.write:
        print(table, end="")
        return 0
    readme = Path(args.readme)
    text = readme.read_text()
    if START not in text or END not in text:
        parser.error(f"{readme} has no {START} … {END} markers")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{START}\n{table}{END}{tail}")
    print(f"updated {readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
