#!/usr/bin/env bash
# Benchmark: what a differential backup costs against a full, side by side in one run, on a
# fixture tree (`cargo xtask fixture make`): a full; then 1% new media and a live writer on the
# database; then a differential. Its time and stored bytes as fractions of the full's, and a
# restore of the differential onto a lost server against a restore of the full (each checked
# byte-identical to the tree it was made of). Directory store, and S3 (s3s-fs on loopback) when
# s3s-fs is installed (.ci/install-s3-servers.sh). Performance is measured, never asserted.
#
#   bench/differential.sh [SIZE]     SIZE of media in the fixture (default 1G)
#   BENCH_DIR=/path …                where trees and backups go (default ./bench-out)
#   BENCH_STORES="dir s3"            which stores to measure (default both)
#   BENCH_RESTORES=0                 skip the restores (a large tree needs 2x its size again for them)
set -euo pipefail
size=${1:-1G}
repo=$(cd "$(dirname "$0")/.." && pwd)
out=${BENCH_DIR:-$repo/bench-out}/differential-$size
rm -rf "$out"; mkdir -p "$out"
out=$(cd "$out" && pwd)
[ -x /usr/bin/time ] || { apt-get update -qq && apt-get install -y -qq time >/dev/null; }
cargo build --release --quiet --manifest-path "$repo/Cargo.toml" --workspace
bin=$repo/target/release/synapse-backup
xtask=$repo/target/release/xtask

tree=$out/tree
"$xtask" fixture make "$tree" --size "$size" >/dev/null
config=$tree/homeserver.yaml
pass=$out/passphrase; printf 'benchmark passphrase' > "$pass"; chmod 600 "$pass"
export SYNAPSE_BACKUP_PASSPHRASE_FILE=$pass
unset SYNAPSE_BACKUP_STORE AWS_ENDPOINT_URL HTTP_PROXY HTTPS_PROXY http_proxy https_proxy

measure() { # label, command... → secs_<label>, rss_<label>; stdout kept in $out/out.<label>
  local label=$1; shift
  /usr/bin/time -f "%e %M" -o "$out/time.$label" "$@" >"$out/out.$label" 2>"$out/err.$label" || {
    echo "$label failed:" >&2; cat "$out/err.$label" >&2; exit 1; }
  read -r secs rss < "$out/time.$label"
  eval "secs_$label=$secs rss_$label=$rss"
}
field() { python3 -c "import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])" "$1" "$2"; }
state() { # the files a restore must give back: key and media by content, the database by its dump
  (cd "$1" && find ./*.signing.key media_store/local_content media_store/local_thumbnails -type f -print0 \
    | sort -z | xargs -0 sha256sum; sqlite3 homeserver.db .dump | sha256sum)
}
grow_media() { # 1% of the media size as new uploads in new shards
  python3 - "$tree" "$size" <<'EOF'
import os, sys, random
tree, size = sys.argv[1], sys.argv[2]
units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
total = int(float(size[:-1]) * units[size[-1].upper()]) if size[-1].isalpha() else int(size)
left, i = total // 100, 0
while left > 0:
    n = min(left, random.randint(20_000, 2_000_000))
    d = os.path.join(tree, "media_store/local_content", "zz", f"{i:02x}")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"new{i}"), "wb") as f:
        f.write(os.urandom(n))
    left -= n; i += 1
EOF
}

run_store() { # name, store args...
  local name=$1; shift
  local store=("$@")
  measure "${name}_full" "$bin" --json --synapse-config "$config" "${store[@]}" create --type full
  local full; full=$(field "$out/out.${name}_full" backup-id)
  state "$tree" > "$out/state.full"
  grow_media
  "$xtask" fixture churn "$tree" --seconds 600 >/dev/null 2>&1 & local churn=$!
  sleep 1
  measure "${name}_diff" "$bin" --json --synapse-config "$config" "${store[@]}" create --type differential
  kill "$churn" 2>/dev/null; wait "$churn" 2>/dev/null || true
  local diff; diff=$(field "$out/out.${name}_diff" backup-id)
  [ "$(field "$out/out.${name}_diff" type)" = differential ] || { echo "not a differential" >&2; exit 1; }
  eval "secs_${name}_restore_full=0 secs_${name}_restore_diff=0"
  # restore each onto a lost server (an empty directory with the config pointing there)
  for what in full diff; do
    [ "${BENCH_RESTORES:-1}" = 1 ] || break
    local id=$full; [ $what = diff ] && id=$diff
    local dest=$out/restore-$name-$what
    mkdir -p "$dest"; sed "s#$tree/#$dest/#g" "$config" > "$dest.yaml"
    sync
    measure "${name}_restore_$what" "$bin" --synapse-config "$dest.yaml" "${store[@]}" restore "$id"
  done
  # what each restore must equal: the full the tree at the full; the differential the tree now
  # (minus the churn after the snapshot: the database is compared by the snapshot's own restore)
  if [ "${BENCH_RESTORES:-1}" = 1 ]; then
    diff <(state "$out/restore-$name-full") "$out/state.full" >/dev/null || { echo "$name: the full's restore differs" >&2; exit 1; }
    cmp <(state "$out/restore-$name-diff" | head -n -1) <(state "$tree" | head -n -1) \
      || { echo "$name: the differential's restore differs from the tree" >&2; exit 1; }
  fi
  local full_bytes diff_bytes db_bytes
  full_bytes=$(field "$out/out.${name}_full" size); diff_bytes=$(field "$out/out.${name}_diff" size)
  db_bytes=$(stat -c %s "$tree/homeserver.db")
  local times=() t
  for t in full diff restore_full restore_diff; do
    local var="secs_${name}_$t"
    times+=("${!var}")
  done
  python3 - "$name" "${times[@]}" "$full_bytes" "$diff_bytes" "$db_bytes" <<EOF
import sys
name, cf, cd, rf, rd, fb, db_, dbb = sys.argv[1], *map(float, sys.argv[2:6]), *map(int, sys.argv[6:9])
print(f"{name}: full {cf:.2f} s, {fb/1e6:.1f} MB; differential {cd:.2f} s, {db_/1e6:.1f} MB (database {dbb/1e6:.1f} MB)")
print(f"{name}:   differential/full time {cd/cf:.3f} (target <= 0.10), bytes {db_/fb:.3f} (target <= 0.05 + database {dbb/fb:.3f})")
if rf > 0:
    print(f"{name}:   restore full {rf:.2f} s, differential {rd:.2f} s: {rd/rf:.2f}x (target <= 1.2)")
EOF
  # back to the tree as it was, for the next store
  rm -rf "$tree/media_store/local_content/zz"
  rm -rf "$out"/restore-"$name"-*
}

stores=${BENCH_STORES:-dir s3}
echo "tree: $size of media in $tree" >&2
[[ " $stores " == *" dir "* ]] && run_store dir --store "$out/store"

if [[ " $stores " != *" s3 "* ]]; then
  :
elif command -v s3s-fs >/dev/null; then
  export AWS_ACCESS_KEY_ID=AKIABENCH AWS_SECRET_ACCESS_KEY="bench-secret-$RANDOM$RANDOM" AWS_DEFAULT_REGION=us-east-1
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  mkdir -p "$out/s3/bench"
  s3s-fs --host 127.0.0.1 --port "$port" --access-key "$AWS_ACCESS_KEY_ID" --secret-key "$AWS_SECRET_ACCESS_KEY" \
    "$out/s3" >/dev/null 2>&1 & s3pid=$!
  trap 'kill $s3pid 2>/dev/null' EXIT
  for _ in $(seq 50); do curl -s "http://127.0.0.1:$port" >/dev/null && break; sleep 0.1; done
  run_store s3 --bucket bench --endpoint "http://127.0.0.1:$port" --s3-uri-style path --path synapse
else
  echo "(s3s-fs not installed: the S3 run is skipped; .ci/install-s3-servers.sh installs it)" >&2
fi
