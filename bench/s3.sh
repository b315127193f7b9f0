#!/usr/bin/env bash
# The benchmark's S3 mode: in one run, against one s3s-fs on loopback,
#   - create/restore with synapse-backup (tar → gzip → OpenPGP → multipart upload, and back),
#   - the reference charm's pipelines: tar | gpg --symmetric | aws s3 cp -   and
#     aws s3 cp - | gpg -d | tar -x,
#   - bare transfers of an object the size of our backup, the limits to approach: one SigV4 PUT and
#     one GET (curl), awscli's multipart upload (the floor for a stream, whose size is not known up
#     front), and four ranged GETs at once (curl), as our restore makes.
# Prints MB/s (of the backed-up source bytes; of the object's bytes for the bare transfer), the
# ratios, each run's peak RSS, and the CPU time s3s-fs spent on it (it shares this machine's cores).
#
# Usage: bench/s3.sh [SIZE]          SIZE of media in the fixture, default 1G (use 64M to try it out)
# Env:   FIXTURE=DIR  reuse a fixture tree made by `cargo xtask fixture make` (left as it is: restores go elsewhere)
#        BIN=PATH     the synapse-backup binary (default: target/release/synapse-backup, built if absent)
# Needs: s3s-fs, awscli, gpg, curl ≥ 7.75, /usr/bin/time (.ci/install-s3-servers.sh, WITH_AWSCLI=1).
set -euo pipefail

SIZE=${1:-1G}
REPO=$(cd "$(dirname "$0")/.." && pwd)
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
    cargo run --release --quiet --manifest-path "$REPO/Cargo.toml" -p xtask -- fixture make "$DATA" --size "$SIZE" --profile mixed >/dev/null
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
OURS=(--bucket bench --endpoint "$ENDPOINT" --s3-uri-style path --path synapse --quiet)

# run LABEL CMD…: wall seconds, peak RSS (KiB, the largest process of the run) and the CPU seconds
# s3s-fs spent meanwhile into $SECS/$RSS/$SRV
TICK=$(getconf CLK_TCK)
server_ticks() { awk '{print $14 + $15}' "/proc/$SERVER_PID/stat"; }
run() {
    local label=$1; shift
    local t0 t1 s0 s1
    s0=$(server_ticks); t0=$(date +%s.%N)
    /usr/bin/time -f '%M' -o "$WORK/rss" "$@"
    t1=$(date +%s.%N); s1=$(server_ticks)
    SECS=$(python3 -c "print(f'{$t1 - $t0:.2f}')")
    SRV=$(python3 -c "print(f'{($s1 - $s0) / $TICK:.1f}')")
    RSS=$(tail -1 "$WORK/rss")
    echo "  $label: ${SECS}s, peak RSS $((RSS / 1024)) MiB, s3s-fs CPU ${SRV}s" >&2
}
mbps() { python3 -c "print(f'{$1 / $2 / 1e6:.0f}')"; }
ratio() { python3 -c "print(f'{$1 / $2:.2f}')"; }

echo "S3 benchmark: $((SOURCE_BYTES / 1000000)) MB of Synapse data, s3s-fs at $ENDPOINT" >&2

# ---- create: synapse-backup, then the reference (tar | gpg | aws s3 cp) ----
find "$DATA" -type f -print0 | xargs -0 cat >/dev/null # a warm page cache for every contender
sync # and nothing left to write back, from anything earlier
run "synapse-backup create" "$BIN" "${OURS[@]}" --synapse-config "$CONFIG" --json create >"$WORK/create.json"
OUR_CREATE=$SECS; OUR_CREATE_RSS=$RSS; OUR_CREATE_SRV=$SRV
ID=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['backup-id'])" "$WORK/create.json")
OBJECT_BYTES=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['size'])" "$WORK/create.json")
TIME_EACH="/usr/bin/time -a -o $WORK/ref-rss -f %M"
: >"$WORK/ref-rss"
sync
run "tar | gpg --symmetric | aws s3 cp -" bash -o pipefail -c "
    cd '$DATA' && $TIME_EACH tar -c $SOURCES \
    | $TIME_EACH gpg --batch --quiet --symmetric --pinentry-mode loopback --passphrase-file '$PASSFILE' \
    | $TIME_EACH ${AWS[*]} s3 cp --only-show-errors - s3://bench/reference.tar.gpg"
REF_CREATE=$SECS; REF_CREATE_RSS=$(sort -n "$WORK/ref-rss" | tail -1); REF_CREATE_SRV=$SRV

# ---- restore: both into empty directories (a server that lost its data). Nothing is deleted just
# before: ext4 without a journal (this machine's root) will not reuse an inode freed in the last
# minute (five, while its inode-table block is dirty) and scans past each one for every new file,
# which doubled restore times here and would measure this script, not the tools. A `sync` before
# each restore: our restore ends with a syncfs, which must not write what the other left behind ----
sync
RESTORE_REF=$WORK/reference-restore; mkdir "$RESTORE_REF"
: >"$WORK/ref-rss"
run "aws s3 cp - | gpg -d | tar -x" bash -o pipefail -c "
    $TIME_EACH ${AWS[*]} s3 cp --only-show-errors s3://bench/reference.tar.gpg - \
    | $TIME_EACH gpg --batch --quiet --decrypt --pinentry-mode loopback --passphrase-file '$PASSFILE' \
    | $TIME_EACH tar -x -C '$RESTORE_REF'"
REF_RESTORE=$SECS; REF_RESTORE_RSS=$(sort -n "$WORK/ref-rss" | tail -1); REF_RESTORE_SRV=$SRV
sync
RESTORE_OURS=$WORK/ours-restore; mkdir "$RESTORE_OURS"
sed "s#$DATA/#$RESTORE_OURS/#g" "$CONFIG" >"$WORK/ours-restore.yaml"
run "synapse-backup restore" "$BIN" "${OURS[@]}" --synapse-config "$WORK/ours-restore.yaml" restore "$ID" >/dev/null
OUR_RESTORE=$SECS; OUR_RESTORE_RSS=$RSS; OUR_RESTORE_SRV=$SRV
[ -f "$RESTORE_OURS/homeserver.db" ] || { echo "our restore did not land in $RESTORE_OURS" >&2; exit 1; }
rm -rf "$RESTORE_REF" "$RESTORE_OURS"

# ---- the limits: bare transfers of an object of our backup's size, no archive work at all ----
head -c "$OBJECT_BYTES" /dev/urandom >"$WORK/object"
CURLCFG=$WORK/curl.cfg
printf 'user = "%s:%s"\naws-sigv4 = "aws:amz:us-east-1:s3"\nsilent\nshow-error\nfail\n' \
    "$AWS_ACCESS_KEY_ID" "$AWS_SECRET_ACCESS_KEY" >"$CURLCFG"
CURL=(curl -K "$CURLCFG" -H "x-amz-content-sha256: UNSIGNED-PAYLOAD")
sync
run "bare PUT (curl)" "${CURL[@]}" -T "$WORK/object" "$ENDPOINT/bench/bare"
BARE_PUT=$SECS; BARE_PUT_SRV=$SRV
# A backup is streamed, so its size is unknown until the end: it has to be a multipart upload, and
# s3s-fs's CompleteMultipartUpload reads every part back, MD5s and concatenates them on one core.
# awscli's own multipart upload of the same bytes is the floor for any streaming client.
sync
run "bare multipart upload (awscli)" "${AWS[@]}" s3 cp --only-show-errors "$WORK/object" s3://bench/bare-multipart
BARE_MPU=$SECS; BARE_MPU_SRV=$SRV
rm -f "$WORK/object"
run "bare GET (curl)" "${CURL[@]}" -o /dev/null "$ENDPOINT/bench/bare"
BARE_GET=$SECS; BARE_GET_SRV=$SRV
# four ranged GETs at once, as our restore does (one GET is bound by s3s-fs's 4 KiB reads)
QUARTER=$(( (OBJECT_BYTES + 3) / 4 ))
run "bare GET, 4 ranges at once (curl)" bash -c "
    for i in 0 1 2 3; do
        ${CURL[*]@Q} -r \$((i * $QUARTER))-\$(((i + 1) * $QUARTER - 1)) -o /dev/null '$ENDPOINT/bench/bare' &
    done
    wait"
BARE_RGET=$SECS; BARE_RGET_SRV=$SRV

# ---- the report ----
row() { # label seconds bytes [rss KiB] server-cpu
    local rss=${4:+$(($4 / 1024)) MiB}
    printf '%-40s %8s %7s %9s %9s\n' "$1" "$2" "$(mbps "$3" "$2")" "${rss:--}" "$5"
}
budget() { python3 -c "print(f'{$1 / $2:.2f}')"; }
CREATE_BUDGET=$(budget "$REF_CREATE" 4)
RESTORE_BUDGET=$(budget "$REF_RESTORE" 2)
cat <<EOF

S3 mode (s3s-fs on loopback), $((SOURCE_BYTES / 1000000)) MB of Synapse data, backup object $((OBJECT_BYTES / 1000000)) MB
                                          seconds    MB/s  peak RSS  s3s-fs CPU s
$(row "synapse-backup create" "$OUR_CREATE" "$SOURCE_BYTES" "$OUR_CREATE_RSS" "$OUR_CREATE_SRV")
$(row "tar | gpg --symmetric | aws s3 cp -" "$REF_CREATE" "$SOURCE_BYTES" "$REF_CREATE_RSS" "$REF_CREATE_SRV")
$(row "bare PUT, one request (curl)" "$BARE_PUT" "$OBJECT_BYTES" "" "$BARE_PUT_SRV")
$(row "bare multipart upload (awscli)" "$BARE_MPU" "$OBJECT_BYTES" "" "$BARE_MPU_SRV")
$(row "synapse-backup restore" "$OUR_RESTORE" "$SOURCE_BYTES" "$OUR_RESTORE_RSS" "$OUR_RESTORE_SRV")
$(row "aws s3 cp - | gpg -d | tar -x" "$REF_RESTORE" "$SOURCE_BYTES" "$REF_RESTORE_RSS" "$REF_RESTORE_SRV")
$(row "bare GET, one request (curl)" "$BARE_GET" "$OBJECT_BYTES" "" "$BARE_GET_SRV")
$(row "bare GET, 4 ranges at once (curl)" "$BARE_RGET" "$OBJECT_BYTES" "" "$BARE_RGET_SRV")

create:  $(ratio "$REF_CREATE" "$OUR_CREATE")× the gpg+awscli pipeline (target ≥ 4×: ≤ ${CREATE_BUDGET} s)
         $(ratio "$OUR_CREATE" "$BARE_MPU")× the time of the bare multipart upload, which alone takes $(ratio "$BARE_MPU" "$CREATE_BUDGET")× that budget
         $(ratio "$OUR_CREATE" "$BARE_PUT")× the time of the bare single PUT (not an option for a stream of unknown size)
restore: $(ratio "$REF_RESTORE" "$OUR_RESTORE")× the gpg+awscli pipeline (target ≥ 2×: ≤ ${RESTORE_BUDGET} s)
         $(ratio "$OUR_RESTORE" "$BARE_RGET")× the time of the bare 4-range GET, which alone takes $(ratio "$BARE_RGET" "$RESTORE_BUDGET")× that budget
peak RSS: create $((OUR_CREATE_RSS / 1024)) MiB, restore $((OUR_RESTORE_RSS / 1024)) MiB (target ≤ 64 MiB)
EOF
