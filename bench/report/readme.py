"""The README's generated blocks: ``<!-- NAME:begin (generated: PATH; ...) -->`` ... ``<!-- NAME:end -->``
hold the text of PATH (relative to the README) word for word: a reference report's ``tables/summary.md``
or ``tables/run_cost.md``. After regenerating a report, paste them::

    python -m bench.report.readme            # rewrite README.md's blocks from their files
    python -m bench.report.readme --check    # exit 1 naming every block that differs from its file

``tests/test_report.py`` checks the committed README the same way.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import List, Optional, Tuple

README = Path(__file__).resolve().parents[2] / "README.md"
BLOCK = re.compile(r"(<!-- ([\w-]+):begin \(generated: ([^;)]+)[^>]*-->\n)(.*?)(<!-- \2:end -->)", re.S)


def blocks(text: str) -> List[Tuple[str, str, str]]:
    """(name, source path as written, body) of every generated block, in order."""
    return [(m.group(2), m.group(3).strip(), m.group(4)) for m in BLOCK.finditer(text)]


def sync(readme: Path = README, check: bool = False) -> List[str]:
    """The names of the blocks whose body differs from their file; unless ``check``, rewrite them.
    Raises FileNotFoundError naming a block whose file is missing (nothing is written then)."""
    text = readme.read_text()
    stale = []

    def paste(m: re.Match) -> str:
        src = readme.parent / m.group(3).strip()
        if not src.is_file():
            raise FileNotFoundError(f"README block {m.group(2)} quotes {m.group(3).strip()}, which is missing")
        body = src.read_text()
        if body != m.group(4):
            stale.append(m.group(2))
        return m.group(1) + body + m.group(5)

    new = BLOCK.sub(paste, text)
    if stale and not check:
        readme.write_text(new)
    return stale


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.report.readme", description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="change nothing; exit 1 if a block differs from its file")
    ap.add_argument("--readme", type=Path, default=README)
    args = ap.parse_args(argv)
    try:
        stale = sync(args.readme, check=args.check)
    except (FileNotFoundError, OSError) as exc:
        print(f"bench.report.readme: error: {exc}", file=sys.stderr)
        return 2
    verb = "differ from their files" if args.check else "rewritten"
    print(f"{args.readme.name}: " + (f"{', '.join(stale)} {verb}" if stale else "every generated block is current"))
    return 1 if stale and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
