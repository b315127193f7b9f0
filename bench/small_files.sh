#!/usr/bin/env bash
# Benchmark: the cost per file on a media store of many small files (issue 17). For each COUNT,
# a fixture tree (`xtask fixture make DIR --size 64M --small-files COUNT`: COUNT extra local media
# files of 200–1,200 random bytes, each in its own `local_content/ab/cd/` shard) is backed up and
# restored by synapse-backup and by the reference pipeline (`tar -c | gpg --batch --symmetric`,
# `gpg -d | tar -x && sync -f`), side by side in one run. Prints seconds, peak RSS, stored bytes,
# the ratios ours/reference (below 1 is better) and the time per file. Every timed step starts from
# written-back, dropped caches (as root), and each restore's media and signing key must come back
# byte-identical to the tree (the run stops otherwise). Not part of the test suite:
# performance is measured, never asserted.
#
#   bench/small_files.sh [COUNT...]         (default 30000 300000)
#   BASELINE_BIN=/path/synapse-backup ...   also measure that build in the same run (before/after)
#   BENCH_DIR=/path ...                     where trees and backups go (default ./bench-out)
#   BENCH_SIZE=256M bench/small_files.sh 0  media of the fixture (default 64M): with COUNT 0, the
#                                           mixed fixture of bench/run.sh, before/after in one run
set -euo pipefail
counts=("$@")
[ ${#counts[@]} -gt 0 ] || counts=(30000 300000)
repo=$(cd "$(dirname "$0")/.." && pwd)
out=${BENCH_DIR:-$repo/bench-out}
mkdir -p "$out"
out=$(cd "$out" && pwd)

command -v gpg >/dev/null && [ -x /usr/bin/time ] || { apt-get update -qq && apt-get install -y -qq gnupg time >/dev/null; }
cargo build --release --quiet --manifest-path "$repo/Cargo.toml" -p synapse-backup -p xtask
bin=$repo/target/release/synapse-backup
xtask=$repo/target/release/xtask
base=${BASELINE_BIN:+$(readlink -f "$BASELINE_BIN")}

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
# Before each timed step: write back what is dirty, and, as root, drop the page cache, so every step
# starts from the same memory. On a fresh VM, memory the guest never touched costs a fault in the host
# on first use: a restore that runs on untouched memory spends most of its system time zeroing pages
# (300,000 files: the reference 18.3 s against 11.9 s after a drop, ours 21.0 s against 12.6 s).
settle() {
  sync
  [ "$(id -u)" = 0 ] && echo 3 2>/dev/null >/proc/sys/vm/drop_caches || true
}
# `xtask fixture digest` (sha256, size, path of every file) of what a restore gives back as it was
kept_digest() { "$xtask" fixture digest "$1" | awk '$3 ~ /^media_store\/local_/ || $3 ~ /\.signing\.key$/'; }
ratio() { python3 -c "print(f'{$1/$2:5.2f}x')"; }
per_file() { python3 -c "print(f'{$1*1e6/$2:6.1f}')"; }

# Restores go into empty directories made for this run; what earlier runs restored is deleted
# at the end, not just before a restore (ext4 without a journal scans past recently freed inodes:
# see bench/run.sh).
rm -rf "$out"/small-restore-*
for count in "${counts[@]}"; do
  media=${BENCH_SIZE:-64M}
  tree=$out/small-tree-$count
  [ "$media" = 64M ] || tree=$out/small-tree-$count-$media
  if [ ! -f "$tree/.made" ]; then
    rm -rf "$tree"
    "$xtask" fixture make "$tree" --size "$media" --small-files "$count" >/dev/null
    touch "$tree/.made"
  fi
  config=$tree/homeserver.yaml
  paths=("$tree"/*.signing.key "$tree/homeserver.db" "$tree"/media_store/local_*)
  bytes=$(du -cb "${paths[@]}" | tail -1 | cut -f1)
  files=$(find "${paths[@]}" -type f | wc -l)
  kept_digest "$tree" > "$out/digest-$count" # what each restore must give back

  tools=(ours)
  [ -n "$base" ] && tools+=(base)
  declare -A tool_bin=([ours]=$bin [base]=$base)
  rm -rf "$out/small-store-"* "$out/small-ref.gpg"
  settle
  measure ref_create bash -c "cd / && tar -c ${paths[*]} 2>/dev/null | gpg ${gpg_opts[*]} --symmetric -o $out/small-ref.gpg"
  for t in "${tools[@]}"; do
    settle
    measure "${t}_create" "${tool_bin[$t]}" --quiet --synapse-config "$config" --store "$out/small-store-$t" create
  done
  restore=$out/small-restore-$count
  mkdir -p "$restore/ref"
  settle
  measure ref_restore bash -c "gpg ${gpg_opts[*]} -d $out/small-ref.gpg | tar -x -C $restore/ref && sync -f $restore/ref"
  for t in "${tools[@]}"; do
    mkdir -p "$restore/$t"
    sed "s#$tree/#$restore/$t/#g" "$config" > "$restore/$t.yaml"
    id=$(ls "$out/small-store-$t" | grep '^backup-' | head -1)
    eval "id_$t=$id"
    settle
    measure "${t}_restore" "${tool_bin[$t]}" --quiet --synapse-config "$restore/$t.yaml" --store "$out/small-store-$t" restore "$id"
    [ -f "$restore/$t/homeserver.db" ] || { echo "$t: the restore did not land in $restore/$t" >&2; exit 1; }
    # the restored media and signing key are byte-identical to the tree's (the database is not:
    # a restore empties one-time keys and folds the WAL in)
    kept_digest "$restore/$t" | cmp -s - "$out/digest-$count" ||
      { echo "$t: the restored media or signing key differ from the tree's" >&2; exit 1; }
    settle
    measure "${t}_verify" "${tool_bin[$t]}" --quiet --synapse-config "$config" --store "$out/small-store-$t" verify "$id"
  done
  settle
  measure ref_verify bash -c "gpg ${gpg_opts[*]} -d $out/small-ref.gpg | tar -t >/dev/null"

  ref_stored=$(stat -c %s "$out/small-ref.gpg")
  printf '\n%s small files + %s media: %s files, %s to back up; reference stores %s bytes (%s of the input)\n' \
    "$count" "$media" "$files" "$(numfmt --to=iec "$bytes")" "$ref_stored" "$(ratio "$ref_stored" "$bytes")"
  printf '%-12s %8s %8s %8s %9s   %-8s %-8s %-8s %-8s  %s\n' "" create restore verify "RSS MiB" "create" "restore" "verify" "stored" "µs/file (c/r)"
  printf '%-12s %8s %8s %8s %9s   %s\n' reference "$secs_ref_create" "$secs_ref_restore" "$secs_ref_verify" \
    "$((rss_ref_restore/1024))" "(ratios ours/reference)"
  for t in "${tools[@]}"; do
    id_var=id_$t
    stored=$(stat -c %s "$out/small-store-$t/${!id_var}")
    c=secs_${t}_create r=secs_${t}_restore v=secs_${t}_verify
    rc=rss_${t}_create rr=rss_${t}_restore rv=rss_${t}_verify
    rss=$(( (${!rc} > ${!rr} ? ${!rc} : ${!rr}) ))
    rss=$(( (rss > ${!rv} ? rss : ${!rv}) / 1024 ))
    printf '%-12s %8s %8s %8s %9s   %-8s %-8s %-8s %-8s  %s / %s\n' "$t" "${!c}" "${!r}" "${!v}" "$rss" \
      "$(ratio "${!c}" "$secs_ref_create")" "$(ratio "${!r}" "$secs_ref_restore")" \
      "$(ratio "${!v}" "$secs_ref_verify")" "$(ratio "$stored" "$ref_stored")" \
      "$(per_file "${!c}" "$files")" "$(per_file "${!r}" "$files")"
    printf '%-12s peak RSS MiB: create %s, restore %s, verify %s; stored %s bytes\n' "" \
      $((${!rc}/1024)) $((${!rr}/1024)) $((${!rv}/1024)) "$stored"
  done
  printf '%-12s µs/file (c/r): %s / %s\n' reference "$(per_file "$secs_ref_create" "$files")" "$(per_file "$secs_ref_restore" "$files")"
done
rm -rf "$out"/small-restore-* "$out/small-ref.gpg"
