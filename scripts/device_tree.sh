#!/usr/bin/env bash
# Keep the tree that a device call sends under its 64 MiB limit (tracked and untracked-not-ignored files, plus the
# carried paths). The shipped checkpoints and training states that no GPU run reads (every data/models/tabpfn_*
# except the fallback, tabpfn_fallback.ckpt, which chapter 10's GPU runs load) are moved out of the checkout
# before a call and back after it:
#
#   bash scripts/device_tree.sh size .whl .device_carry/pretrain   # MiB that would travel with these carried paths
#   bash scripts/device_tree.sh aside                              # move them to $TTT_ASIDE (default /tmp/ttt_aside)
#   ... the device call ...
#   bash scripts/device_tree.sh back                               # and move them back
#
# While they are aside, git sees them as deleted: never `git add -A` then, and run `back` before any test. A call
# that needs one of them keeps it in the checkout (`aside --keep NAME`, NAME as in data/models/, repeatable), or
# copies it back (cp -r /tmp/ttt_aside/NAME data/models/); `back` then keeps that copy if it is the same file or
# folder, and moves nothing back if any such copy differs. `aside --with-fallback` also sets the fallback aside,
# for a call that does not read it (pretraining): a resumed training state and the wheels fit then.
# TTT_ROOT names another checkout (tests); the default is this script's.
set -euo pipefail
ROOT=${TTT_ROOT:-$(cd "$(dirname "$0")/.." && pwd)}
ASIDE=${TTT_ASIDE:-/tmp/ttt_aside}
cd "$ROOT"
aside_paths() {  # $KEEP: names to keep, one per line; $WITH_FALLBACK: 1 to set the fallback aside too
  local p name
  for p in data/models/tabpfn_*; do
    [ -e "$p" ] || continue
    name=$(basename "$p")
    if printf '%s\n' "$KEEP" | grep -qxF -- "$name"; then continue; fi
    case "$name" in
      tabpfn_fallback.ckpt) [ "$WITH_FALLBACK" = 1 ] && echo "$p" ;;
      *.json) ;;  # every record (small) stays
      *) echo "$p" ;;
    esac
  done
  return 0
}
case "${1:-}" in
  size)
    shift
    { git ls-files -z --cached --others --exclude-standard; for c in "$@"; do find "$c" -type f -print0; done; } |
      xargs -0 -r stat -c %s -- 2>/dev/null | awk '{s += $1} END {printf "%.1f MiB (limit 64)\n", s / 1048576}'
    ;;
  aside)
    shift
    KEEP="" WITH_FALLBACK=0
    while [ $# -gt 0 ]; do
      case "$1" in
        --keep) [ $# -ge 2 ] && [ -e "data/models/$2" ] || { echo "--keep: no data/models/${2:-}" >&2; exit 2; }
                KEEP="$KEEP$2"$'\n'; shift 2 ;;
        --with-fallback) WITH_FALLBACK=1; shift ;;
        *) echo "aside: unknown option $1" >&2; exit 2 ;;
      esac
    done
    mkdir -p "$ASIDE"
    if [ -n "$(ls -A "$ASIDE")" ]; then echo "$ASIDE is not empty: run 'back' first" >&2; exit 1; fi
    aside_paths | while read -r p; do mv "$p" "$ASIDE/"; echo "aside: $p"; done
    rm -f data/models/.*.lock
    ;;
  back)
    [ -d "$ASIDE" ] || { echo "nothing aside ($ASIDE does not exist)" >&2; exit 1; }
    for p in "$ASIDE"/* ; do  # everything is checked before anything moves
      [ -e "$p" ] || continue
      q="data/models/$(basename "$p")"
      if [ -e "$q" ] && ! diff -rq -- "$p" "$q" > /dev/null 2>&1; then
        echo "$q exists and differs from $p: nothing moved back" >&2; exit 1
      fi
    done
    for p in "$ASIDE"/* ; do
      [ -e "$p" ] || continue
      q="data/models/$(basename "$p")"
      if [ -e "$q" ]; then  # a copy put back for a call (cp "$ASIDE"/NAME data/models/): the same bytes
        rm -rf -- "$p"; echo "back: $q (the checkout already holds the same file)"
      else
        mv "$p" data/models/; echo "back: $q"
      fi
    done
    rm -f data/models/.*.lock
    ;;
  *)
    echo "usage: $0 size [CARRIED PATH ...] | aside [--keep NAME]... [--with-fallback] | back" >&2; exit 2 ;;
esac
