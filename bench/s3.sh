#!/usr/bin/env bash
# The benchmark's S3 mode: in one run, against one s3s-fs on loopback,
#   - create/restore with synapse-backup (tar → gzip → OpenPGP → multipart upload, and back),
#   - the reference charm's pipelines: tar | gpg --symmetric | aws s3 cp -   and
#     aws s3 cp - | gpg -d | tar -x,
#   - a bare SigV4 PUT/GET (curl) of an object the size of our backup: the limit to approach.
# Prints MB/s (of the backed-up source bytes; of the object's bytes for the bare transfer), the
# ratios, and each run's peak RSS.
#
# Usage: bench/s3.sh [SIZE]          SIZE of media in the fixture, default 1G (use 64M to try it out)
# Env:   FIXTURE=DIR  reuse a fixture tree made by synapse-fixture.py (it is restored over in place)
#        BIN=PATH     the synapse-backup binary (default: target/release/synapse-backup, built if absent)
# Needs: s3s-fs, awscli, gpg, curl ≥ 7.75, /usr/bin/time (.ci/install-s3-servers.sh, WITH_AWSCLI=1).
set -euo pipefail

SIZE=${1:-1G}
REPO=$(cd "$(dirname "$0")/.." && pwd)
SHARED=${SHARED:-$REPO/../shared}
[ -f "$SHARED/tools/synapse-fixture.py" ] || SHARED=$REPO/shared
BIN=${BIN:-$REPO/target/release/synapse-backup}
for tool in s3s-fs aws gpg curl /usr/bin/time python3; do
    command -v "$tool" >/dev/null || { echo "bench/s3.sh needs $tool (see .ci/install-s3-servers.sh)" >&2; exit 1; }
done
if [ ! -x "$BIN" ]; then
    (cd "$REPO" && cargo build --release --quiet)
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/synapse-backup-s3-bench.XXXXXX")
SERVER_PID=
cleanup() {
    if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null; wait "$SERVER_PID" 2>/dev/null || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT
chmod 700 "$WORK"

# ---- the fixture and the secrets (files and environment only: never argv) ----
DATA=${FIXTURE:-$WORK/data}
if [ -z "${FIXTURE:-}" ]; then
    echo "making a $SIZE fixture tree…" >&2
    python3 "$SHARED/tools/synapse-fixture.py" make "$DATA" --size "$SIZE" --profile mixed >/dev/null
fi
CONFIG=$DATA/homeserver.yaml
PASSFILE=$WORK/passphrase
printf 'bench passphrase %s\n' "$RANDOM$RANDOM" >"$PASSFILE"
export SYNAPSE_BACKUP_PASSPHRASE_FILE=$PASSFILE
export AWS_ACCESS_KEY_ID=AKIABENCH AWS_SECRET_ACCESS_KEY="bench-secret-$RANDOM$RANDOM" AWS_DEFAULT_REGION=us-east-1
unset AWS_ENDPOINT_URL SYNAPSE_BACKUP_STORE HTTP_PROXY HTTPS_PROXY http_proxy https_proxy ALL_PROXY all_proxy
GNUPGHOME=$WORK/gnupg; export GNUPGHOME; mkdir -m 700 "$GNUPGHOME"

# what a backup carries (the signing key, the database, local media), relative to the data dir
SOURCES=$(cd "$DATA" && ls -d ./*.signing.key homeserver.db media_store/local_content media_store/local_thumbnails 2>/dev/null | tr "\n" " ")
SOURCE_BYTES=$(cd "$DATA" && du -sb --apparent-size $SOURCES | awk '{s+=$1} END {print s}')

# ---- the server ----
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
ENDPOINT=http://127.0.0.1:$PORT
mkdir "$WORK/s3"
# s3s-fs only takes its keys on argv; they are this run's throwaway keys
s3s-fs --host 127.0.0.1 --port "$PORT" --access-key "$AWS_ACCESS_KEY_ID" --secret-key "$AWS_SECRET_ACCESS_KEY" \
    "$WORK/s3" >/dev/null 2>&1 &
SERVER_PID=$!
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.1; done
AWS=(aws --endpoint-url "$ENDPOINT")
"${AWS[@]}" s3api create-bucket --bucket bench >/dev/null
OURS=(--bucket bench --endpoint "$ENDPOINT" --s3-uri-style path --path synapse --synapse-config "$CONFIG" --quiet)

# run LABEL CMD…: wall seconds and peak RSS (KiB, the largest process of the run) into $SECS/$RSS
run() {
    local label=$1; shift
    local t0 t1
    t0=$(date +%s.%N)
    /usr/bin/time -f '%M' -o "$WORK/rss" "$@"
    t1=$(date +%s.%N)
    SECS=$(python3 -c "print(f'{$t1 - $t0:.2f}')")
    RSS=$(tail -1 "$WORK/rss")
    echo "  $label: ${SECS}s, peak RSS $((RSS / 1024)) MiB" >&2
}
mbps() { python3 -c "print(f'{$1 / $2 / 1e6:.0f}')"; }
ratio() { python3 -c "print(f'{$1 / $2:.2f}')"; }

echo "S3 benchmark: $((SOURCE_BYTES / 1000000)) MB of Synapse data, s3s-fs at $ENDPOINT" >&2

# ---- create: synapse-backup, then the reference (tar | gpg | aws s3 cp) ----
find "$DATA" -type f -print0 | xargs -0 cat >/dev/null # a warm page cache for every contender
run "synapse-backup create" "$BIN" "${OURS[@]}" --json create >"$WORK/create.json"
OUR_CREATE=$SECS; OUR_CREATE_RSS=$RSS
ID=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['backup-id'])" "$WORK/create.json")
OBJECT_BYTES=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['size'])" "$WORK/create.json")
TIME_EACH="/usr/bin/time -a -o $WORK/ref-rss -f %M"
: >"$WORK/ref-rss"
run "tar | gpg --symmetric | aws s3 cp -" bash -o pipefail -c "
    cd '$DATA' && $TIME_EACH tar -c $SOURCES \
    | $TIME_EACH gpg --batch --quiet --symmetric --pinentry-mode loopback --passphrase-file '$PASSFILE' \
    | $TIME_EACH ${AWS[*]} s3 cp --only-show-errors - s3://bench/reference.tar.gpg"
REF_CREATE=$SECS; REF_CREATE_RSS=$(sort -n "$WORK/ref-rss" | tail -1)

# ---- restore: both into empty places (a server that lost its data), after the same deletion and a
# pause: for ~30 s after inodes are freed ext4 skips them, scanning its bitmaps for every new file,
# which would measure this script, not the tools ----
(cd "$DATA" && rm -rf $SOURCES)
sync
sleep 35
RESTORE_TO=$WORK/reference-restore; mkdir "$RESTORE_TO"
: >"$WORK/ref-rss"
run "aws s3 cp - | gpg -d | tar -x" bash -o pipefail -c "
    $TIME_EACH ${AWS[*]} s3 cp --only-show-errors s3://bench/reference.tar.gpg - \
    | $TIME_EACH gpg --batch --quiet --decrypt --pinentry-mode loopback --passphrase-file '$PASSFILE' \
    | $TIME_EACH tar -x -C '$RESTORE_TO'"
REF_RESTORE=$SECS; REF_RESTORE_RSS=$(sort -n "$WORK/ref-rss" | tail -1)
run "synapse-backup restore" "$BIN" "${OURS[@]}" restore "$ID" >/dev/null
OUR_RESTORE=$SECS; OUR_RESTORE_RSS=$RSS
rm -rf "$RESTORE_TO"

# ---- the limit: a bare SigV4 PUT and GET of an object of the same size ----
head -c "$OBJECT_BYTES" /dev/urandom >"$WORK/object"
CURLCFG=$WORK/curl.cfg
printf 'user = "%s:%s"\naws-sigv4 = "aws:amz:us-east-1:s3"\nsilent\nshow-error\nfail\n' \
    "$AWS_ACCESS_KEY_ID" "$AWS_SECRET_ACCESS_KEY" >"$CURLCFG"
run "bare PUT (curl)" curl -K "$CURLCFG" -H "x-amz-content-sha256: UNSIGNED-PAYLOAD" -T "$WORK/object" "$ENDPOINT/bench/bare"
BARE_PUT=$SECS
rm -f "$WORK/object"
run "bare GET (curl)" curl -K "$CURLCFG" -H "x-amz-content-sha256: UNSIGNED-PAYLOAD" -o /dev/null "$ENDPOINT/bench/bare"
BARE_GET=$SECS

# ---- the report ----
cat <<EOF

S3 mode (s3s-fs on loopback), $((SOURCE_BYTES / 1000000)) MB of Synapse data, backup object $((OBJECT_BYTES / 1000000)) MB
                                         seconds    MB/s   peak RSS
synapse-backup create                   $(printf '%8s %7s %7s MiB' "$OUR_CREATE" "$(mbps "$SOURCE_BYTES" "$OUR_CREATE")" $((OUR_CREATE_RSS / 1024)))
tar | gpg --symmetric | aws s3 cp -     $(printf '%8s %7s %7s MiB' "$REF_CREATE" "$(mbps "$SOURCE_BYTES" "$REF_CREATE")" $((REF_CREATE_RSS / 1024)))
bare PUT of the object (the limit)      $(printf '%8s %7s' "$BARE_PUT" "$(mbps "$OBJECT_BYTES" "$BARE_PUT")")
synapse-backup restore                  $(printf '%8s %7s %7s MiB' "$OUR_RESTORE" "$(mbps "$SOURCE_BYTES" "$OUR_RESTORE")" $((OUR_RESTORE_RSS / 1024)))
aws s3 cp - | gpg -d | tar -x           $(printf '%8s %7s %7s MiB' "$REF_RESTORE" "$(mbps "$SOURCE_BYTES" "$REF_RESTORE")" $((REF_RESTORE_RSS / 1024)))
bare GET of the object (the limit)      $(printf '%8s %7s' "$BARE_GET" "$(mbps "$OBJECT_BYTES" "$BARE_GET")")

create:  $(ratio "$REF_CREATE" "$OUR_CREATE")× the gpg+awscli pipeline (target ≥ 4×); $(ratio "$OUR_CREATE" "$BARE_PUT")× the bare PUT's time
restore: $(ratio "$REF_RESTORE" "$OUR_RESTORE")× the gpg+awscli pipeline (target ≥ 2×); $(ratio "$OUR_RESTORE" "$BARE_GET")× the bare GET's time
peak RSS: create $((OUR_CREATE_RSS / 1024)) MiB, restore $((OUR_RESTORE_RSS / 1024)) MiB (target ≤ 64 MiB)
EOF
