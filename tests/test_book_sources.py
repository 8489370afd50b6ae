"""Fast checks of the book's MyST sources that would otherwise fail only at the end of CI, in the stored-site build."""

import collections
import re
from pathlib import Path

import pytest

SOURCES = sorted((Path(__file__).resolve().parents[1] / "book" / "_md").glob("*.md"))
CODE_CELL = re.compile(r"```\{code-cell\}[^\n]*\n(.*?)```", re.S)
GLUE_KEY = re.compile(r"""glue\(\s*["']([^"']+)["']""")


def glue_cells(text: str) -> dict:
    """Literal glue keys of a MyST notebook source -> the indexes of the code cells that set them."""
    where = collections.defaultdict(set)
    for i, cell in enumerate(CODE_CELL.findall(text)):
        for key in GLUE_KEY.findall(cell):
            where[key].add(i)
    return where


def test_glue_cells_finds_a_key_set_in_two_cells():
    text = '```{code-cell} ipython3\nglue("a", 1)\nglue("b", 2)\n```\n\n```{code-cell} ipython3\nglue("a", 3)\n```\n'
    assert glue_cells(text) == {"a": {0, 1}, "b": {0}}


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.name)
def test_no_glue_key_is_set_in_two_cells(path):
    """myst-nb rejects a glue key set in two cells of one notebook ("glue key ... duplicate"), and the stored-site
    build treats that warning as an error."""
    twice = {k: sorted(v) for k, v in glue_cells(path.read_text()).items() if len(v) > 1}
    assert not twice, f"{path.name}: glue keys set in more than one code cell: {twice}"


def test_the_sources_are_there():
    assert len(SOURCES) >= 13
