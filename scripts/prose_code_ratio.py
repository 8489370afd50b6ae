"""Prose to code of the chapters: non-blank lines of text against non-blank lines of code, per MyST source.

Usage::

    python scripts/prose_code_ratio.py                 # every chapter in book/_md/
    python scripts/prose_code_ratio.py book/_md/04_isotropic.md --min 1.5   # exit 1 if a chapter is below 1.5

Prose is every non-blank line outside the YAML front matter and outside ``{code-cell}`` blocks: text, display
math, directive fences and options (``{prf:theorem}``, ``{figure}``, ``:label:``) alike, since they are what a
reader reads, plus the lines of a figure caption given in a cell's options (``mystnb: figure: caption:``),
which the book prints under the figure. Code is every non-blank line inside a ``{code-cell}`` block except its
cell options (``---`` fenced YAML or ``:tags:`` lines at the top of the cell).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^(`{3,}|~{3,})\{code-cell\}")


def _caption_lines(options: list[str]) -> int:
    """Non-blank lines of the ``caption:`` value in a cell's YAML options (0 if there is none)."""
    for i, line in enumerate(options):
        key = line.lstrip()
        if key.startswith("caption:"):
            indent = len(line) - len(key)
            value = [line] + [x for x in options[i + 1:] if x.strip()]
            end = next((j for j, x in enumerate(value[1:], 1) if len(x) - len(x.lstrip()) <= indent), len(value))
            return end - (0 if key[len("caption:"):].strip() not in ("", "|", ">", "|-", ">-") else 1)
    return 0


def count(text: str) -> tuple[int, int]:
    """Non-blank prose and code lines of one MyST notebook source."""
    lines = text.splitlines()
    if lines and lines[0].strip() == "---":  # front matter
        end = next(i for i in range(1, len(lines)) if lines[i].strip() == "---")
        lines = lines[end + 1:]
    prose = code = 0
    i = 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            prose += bool(lines[i].strip())
            i += 1
            continue
        fence, i = match.group(1), i + 1
        if i < len(lines) and lines[i].strip() == "---":  # YAML cell options: only a caption is prose
            end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "---")
            prose += _caption_lines(lines[i + 1:end])
            i = end + 1
        while i < len(lines) and lines[i].startswith(":") and re.match(r"^:\w[\w-]*:", lines[i]):  # :tags: [...]
            i += 1
        while i < len(lines) and lines[i].rstrip() != fence:
            code += bool(lines[i].strip())
            i += 1
        i += 1  # closing fence
    return prose, code


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", type=Path, help="MyST sources (default: book/_md/*.md)")
    parser.add_argument("--min", type=float, default=None, help="exit 1 if a chapter's ratio is below this")
    args = parser.parse_args(argv)
    files = args.files or sorted((ROOT / "book" / "_md").glob("*.md"))
    low = []
    print(f"{'chapter':32s} {'prose':>6s} {'code':>6s} {'ratio':>6s}")
    for path in files:
        prose, code = count(path.read_text(encoding="utf-8"))
        ratio = prose / code if code else float("inf")
        print(f"{path.stem:32s} {prose:6d} {code:6d} {ratio:6.2f}")
        if args.min is not None and ratio < args.min:
            low.append(path.stem)
    if low:
        print(f"below {args.min}: {', '.join(low)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
