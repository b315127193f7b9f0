#!/usr/bin/env bash
# The quick start: a real backup → list → verify → restore of the shipped example Synapse tree
# (examples/synapse-data) into a local-directory store. No cloud account, no Juju.
# Works on a copy under target/quickstart/ (in $CARGO_TARGET_DIR when set), so the repository stays as it is.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
target=${CARGO_TARGET_DIR:-$repo/target}
work=$target/quickstart
rm -rf "$work" && mkdir -p "$work"
cp -a "$repo/examples/synapse-data" "$work/data"

# the dev profile (dependencies optimised, see Cargo.toml) shares its build with scripts/test.sh
cargo build --quiet --manifest-path "$repo/Cargo.toml"
sb() { "$target/debug/synapse-backup" --synapse-config "$work/data/homeserver.yaml" --store "$work/store" "$@"; }
# The passphrase comes from the environment or a file, never from the command line.
export SYNAPSE_BACKUP_PASSPHRASE=${SYNAPSE_BACKUP_PASSPHRASE:-quick-start passphrase}

# the database by its content (a dump through Python's sqlite3: the sqlite3 CLI may be absent)
dump() { python3 -c 'import sqlite3, sys; print("\n".join(sqlite3.connect(sys.argv[1]).iterdump()))' "$1"; }
digest() { (cd "$1" && find example.com.signing.key media_store/local_* -type f -print0 | sort -z | xargs -0 sha256sum; dump homeserver.db | sha256sum); }
before=$(digest "$work/data")

echo "== synapse-backup create"
id=$(sb create | head -1)
echo "$id"
echo "== synapse-backup list"
sb list
echo "== synapse-backup verify $id"
sb verify "$id"
echo "== losing the data (signing key, database, local media), then: synapse-backup restore $id"
rm -rf "$work/data/example.com.signing.key" "$work/data/homeserver.db" "$work/data"/media_store/local_*
sb restore "$id"
# no service control here (--service none): the replaced data was kept; the restore is good, drop it
echo "== synapse-backup recover --commit"
sb recover --commit
if [ "$(digest "$work/data")" = "$before" ]; then
  echo "== restored: signing key, database and local media are as they were"
else
  echo "== restored data differs from the original" >&2
  exit 1
fi
