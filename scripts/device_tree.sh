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
# that needs one of them copies it back (cp /tmp/ttt_aside/NAME data/models/); `back` then keeps that copy if it is
# the same file, and moves nothing back if any such copy differs.
# TTT_ROOT names another checkout (tests); the default is this script's.
set -euo pipefail
ROOT=${TTT_ROOT:-$(cd "$(dirname "$0")/.." && pwd)}
ASIDE=${TTT_ASIDE:-/tmp/ttt_aside}
cd "$ROOT"
aside_paths() {
  local p
  for p in data/models/tabpfn_*; do
    [ -e "$p" ] || continue
    case "$(basename "$p")" in
      tabpfn_fallback.ckpt|*.json) ;;  # the fallback, and every record (small), stay
      *) echo "$p" ;;
    esac
  done
}
case "${1:-}" in
  size)
    shift
    { git ls-files -z --cached --others --exclude-standard; for c in "$@"; do find "$c" -type f -print0; done; } |
      xargs -0 -r stat -c %s -- 2>/dev/null | awk '{s += $1} END {printf "%.1f MiB (limit 64)\n", s / 1048576}'
    ;;
  aside)
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
      if [ -e "$q" ] && ! cmp -s "$p" "$q"; then
        echo "$q exists and differs from $p: nothing moved back" >&2; exit 1
      fi
    done
    for p in "$ASIDE"/* ; do
      [ -e "$p" ] || continue
      q="data/models/$(basename "$p")"
      if [ -e "$q" ]; then  # a copy put back for a call (cp "$ASIDE"/NAME data/models/): the same bytes
        rm -f "$p"; echo "back: $q (the checkout already holds the same file)"
      else
        mv "$p" data/models/; echo "back: $q"
      fi
    done
    rm -f data/models/.*.lock
    ;;
  *)
    echo "usage: $0 size [CARRIED PATH ...] | aside | back" >&2; exit 2 ;;
esac
