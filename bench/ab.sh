#!/usr/bin/env bash
# A/B benchmark: restore (and create) with two builds of synapse-backup, alternating, on one fixture
# tree, side by side in one run (this machine is shared and noisy: compare within a run, not across).
#
#   bench/ab.sh OLD_BIN NEW_BIN [SIZE] [SMALL_FILES] [ROUNDS]
#     SIZE         media in the fixture (default 1G)
#     SMALL_FILES  extra small local media files, 200-1200 bytes each (default 0)
#     ROUNDS       restores per binary (default 3)
#   BENCH_DIR=/path  where the tree and the store go (default ./bench-out)
#
# Prints each run's wall seconds, system CPU seconds and peak RSS, then the medians and NEW/OLD.
set -euo pipefail
old=$(readlink -f "$1") new=$(readlink -f "$2")
size=${3:-1G} small=${4:-0} rounds=${5:-3}
repo=$(cd "$(dirname "$0")/.." && pwd)
out=${BENCH_DIR:-$repo/bench-out}
mkdir -p "$out" && out=$(cd "$out" && pwd)
[ -x /usr/bin/time ] || { apt-get update -qq && apt-get install -y -qq time >/dev/null; }

tree=$out/ab-tree-$size-$small
if [ ! -f "$tree/.made" ]; then
  rm -rf "$tree"
  cargo run --release --quiet --manifest-path "$repo/Cargo.toml" -p xtask -- \
    fixture make "$tree" --size "$size" --small-files "$small" >/dev/null
  touch "$tree/.made"
fi
config=$tree/homeserver.yaml
store=$out/ab-store
rm -rf "$store"
printf 'benchmark passphrase' > "$out/ab-passphrase"
export SYNAPSE_BACKUP_PASSPHRASE_FILE=$out/ab-passphrase
"$new" --quiet --synapse-config "$config" --store "$store" create >/dev/null
id=$(ls "$store" | grep -v '\.' | head -1)

run() { # label bin args…
  local label=$1 bin=$2; shift 2
  sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
  /usr/bin/time -f "%e %S %M" -o "$out/ab-time" "$bin" --quiet --synapse-config "$config" --store "$store" "$@" >/dev/null 2>"$out/ab-stderr" \
    || { echo "$label failed:" >&2; cat "$out/ab-stderr" >&2; exit 1; }
  "$bin" --quiet --synapse-config "$config" recover --commit >/dev/null 2>&1 || true
  read -r wall sys rss < "$out/ab-time"
  printf '%-12s wall %6.2f s  sys %6.2f s  peak RSS %6d KiB\n' "$label" "$wall" "$sys" "$rss"
  echo "$wall" >> "$out/ab-$label"
}
rm -f "$out"/ab-old-restore "$out"/ab-new-restore
echo "tree: $size of media + $small small files; backup $id"
for i in $(seq "$rounds"); do
  run old-restore "$old" restore "$id" --service none
  run new-restore "$new" restore "$id" --service none
done
median() { sort -n "$1" | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
o=$(median "$out/ab-old-restore") n=$(median "$out/ab-new-restore")
echo "median restore: old $o s, new $n s, new/old $(awk -v a="$n" -v b="$o" 'BEGIN {printf "%.2f", a/b}')"
