#!/usr/bin/env bash
# Benchmark: synapse-backup create/restore against the reference pipeline
# (`tar -c | gpg --batch --symmetric` and `gpg -d | tar -x`), side by side in one run, on a
# fixture tree made by `cargo xtask fixture make` (xtask/src/fixture.rs). Prints throughput, the ratios and
# peak RSS. Not part of the test suite: performance is measured, never asserted.
#
#   bench/run.sh [SIZE]        SIZE of media in the fixture (default 1G)
#   BENCH_DIR=/path bench/run.sh   where trees and backups go (default ./bench-out; needs ~4×SIZE)
set -euo pipefail
size=${1:-1G}
repo=$(cd "$(dirname "$0")/.." && pwd)
out=${BENCH_DIR:-$repo/bench-out}
mkdir -p "$out"
out=$(cd "$out" && pwd)

command -v gpg >/dev/null && [ -x /usr/bin/time ] || { apt-get update -qq && apt-get install -y -qq gnupg time >/dev/null; }
cargo build --release --quiet --manifest-path "$repo/Cargo.toml"
bin=$repo/target/release/synapse-backup

tree=$out/tree-$size
if [ ! -f "$tree/.made" ]; then
  rm -rf "$tree"
  cargo run --release --quiet --manifest-path "$repo/Cargo.toml" -p xtask -- fixture make "$tree" --size "$size" >/dev/null
  touch "$tree/.made"
fi
config=$tree/homeserver.yaml
paths=("$tree"/*.signing.key "$tree/homeserver.db" "$tree"/media_store/local_*)
bytes=$(du -cb "${paths[@]}" | tail -1 | cut -f1)

export GNUPGHOME=$out/gnupg
mkdir -p -m 700 "$GNUPGHOME"
pass=$GNUPGHOME/passphrase
printf 'benchmark passphrase' > "$pass"
export SYNAPSE_BACKUP_PASSPHRASE_FILE=$pass
gpg_opts=(--batch --yes --quiet --pinentry-mode loopback --passphrase-file "$pass")

# Each measurement: wall seconds and peak RSS (KiB) of the command, via GNU time.
measure() { # label, command...
  local label=$1; shift
  /usr/bin/time -f "%e %M" -o "$out/time.$label" "$@" >/dev/null 2>"$out/stderr.$label" || {
    echo "$label failed:" >&2; cat "$out/stderr.$label" >&2; exit 1; }
  read -r secs rss < "$out/time.$label"
  eval "secs_$label=$secs rss_$label=$rss"
}
warm() { find "$tree" -type f -print0 | xargs -0 cat >/dev/null; }

rm -rf "$out/store" "$out/ref.gpg" "$out/ref-restore"
warm
sync
measure ours_create "$bin" --quiet --synapse-config "$config" --store "$out/store" create
sync
measure ref_create bash -c "cd / && tar -c ${paths[*]} 2>/dev/null | gpg ${gpg_opts[*]} --symmetric -o $out/ref.gpg"
id=$(ls "$out/store" | grep '^backup-' | head -1)
# Both restore into empty directories (a server that lost its data; deleting the data a restore
# replaces is extra work, done after Synapse is started again). Nothing is deleted just before:
# ext4 without a journal (this machine's root) will not reuse an inode freed in the last minute
# (five, while its inode-table block is dirty) and scans past each one for every new file, which
# doubled restore times here and would measure this script, not the tools. A `sync` before each
# restore: ours ends with a syncfs, which must not write what the other left behind.
rm -rf "$out/ours-restore"
mkdir -p "$out/ref-restore" "$out/ours-restore"
sed "s#$tree/#$out/ours-restore/#g" "$config" > "$out/ours-restore.yaml"
sync
measure ref_restore bash -c "gpg ${gpg_opts[*]} -d $out/ref.gpg | tar -x -C $out/ref-restore"
sync
measure ours_restore "$bin" --quiet --synapse-config "$out/ours-restore.yaml" --store "$out/store" restore "$id"
[ -f "$out/ours-restore/homeserver.db" ] || { echo "our restore did not land in $out/ours-restore" >&2; exit 1; }

mbps() { python3 -c "print(f'{$bytes/1e6/$1:7.1f}')"; }
ratio() { python3 -c "print(f'{$1/$2:5.2f}x')"; }
stored=$(stat -c %s "$out/store/$id"); ref_stored=$(stat -c %s "$out/ref.gpg")
printf '\ntree: %s of data to back up (%s media), %s files; stored %s bytes (reference %s)\n' \
  "$(numfmt --to=iec "$bytes")" "$size" "$(find "${paths[@]}" -type f | wc -l)" "$stored" "$ref_stored"
printf '%-34s %8s %9s %12s\n' "" "seconds" "MB/s" "peak RSS"
printf '%-34s %8s %9s %9s MiB\n' "synapse-backup create" "$secs_ours_create" "$(mbps "$secs_ours_create")" $((rss_ours_create/1024))
printf '%-34s %8s %9s %9s MiB\n' "tar -c | gpg --symmetric" "$secs_ref_create" "$(mbps "$secs_ref_create")" $((rss_ref_create/1024))
printf '%-34s %8s %9s %9s MiB\n' "synapse-backup restore" "$secs_ours_restore" "$(mbps "$secs_ours_restore")" $((rss_ours_restore/1024))
printf '%-34s %8s %9s %9s MiB\n' "gpg -d | tar -x" "$secs_ref_restore" "$(mbps "$secs_ref_restore")" $((rss_ref_restore/1024))
printf 'create: %s the reference pipeline; restore: %s\n' "$(ratio "$secs_ref_create" "$secs_ours_create")" "$(ratio "$secs_ref_restore" "$secs_ours_restore")"
rm -rf "$out/ref-restore" "$out/ours-restore" "$out/ours-restore.yaml" "$out/ref.gpg"
