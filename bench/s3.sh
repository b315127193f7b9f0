#!/usr/bin/env bash
# The benchmark's S3 mode: in one run, against one s3s-fs on loopback,
#   - create with synapse-backup (tar → gzip → OpenPGP → multipart upload) against the reference
#     charm's pipeline (tar | gpg --symmetric | aws s3 cp -), and the bare uploads of an object of
#     the backup's size: one SigV4 PUT (curl) and awscli's multipart upload (the floor for a stream,
#     whose size is not known up front);
#   - restore, RESTORE_ROUNDS rounds (default 3), each interleaving our S3 restore; awscli's bare
#     download of our object to a file (its defaults: 8 MiB ranges, 10 at once) and to stdout (into
#     /dev/null: the transfer without the file's page-cache writes); our download alone,
#     through the S3 store into nothing (examples/s3_download); our restore of the same backup from a
#     local directory store (the file awscli downloaded); and the reference pipeline
#     (aws s3 cp - | gpg -d | tar -x). Then the medians, the ratios, and where our S3 restore's time
#     went (staging; the final check and sync; how long its reader waited for the download).
# Prints MB/s (of the backed-up source bytes; of the object's bytes for the bare transfers), each
# run's peak RSS, and the CPU time s3s-fs spent on it (it shares this machine's cores).
#
# Usage: bench/s3.sh [SIZE]          SIZE of media in the fixture, default 1G (use 64M to try it out)
# Env:   FIXTURE=DIR  reuse a fixture tree made by `cargo xtask fixture make` (left as it is: restores go elsewhere)
#        BIN=PATH     the synapse-backup binary (default: target/release/synapse-backup, built if absent)
#        RESTORE_ROUNDS=N  rounds of the interleaved restores (default 3)
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
DOWNLOAD=$REPO/target/release/examples/s3_download
(cd "$REPO" && cargo build --release --quiet --example s3_download)
ROUNDS=${RESTORE_ROUNDS:-3}

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

# ---- the bare uploads: an object of our backup's size, no archive work at all ----
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
"${AWS[@]}" s3 rm --only-show-errors s3://bench/bare
"${AWS[@]}" s3 rm --only-show-errors s3://bench/bare-multipart

# ---- restore: every contender into an empty directory (a server that lost its data), RESTORE_ROUNDS
# rounds, interleaved so that the machine's noise falls on all of them alike. Nothing is deleted
# until the end: ext4 without a journal (this machine's root) will not reuse an inode freed in the
# last minute (five, while its inode-table block is dirty) and scans past each one for every new
# file, which doubled restore times here and would measure this script, not the tools. A `sync`
# before each: our restore ends with a syncfs, which must not write what another left behind ----
OBJECT_KEY=synapse/$ID
STORE_DIR=$WORK/dir-store # a local directory store: our object, as awscli downloaded it
mkdir "$STORE_DIR"
"${AWS[@]}" s3 cp --only-show-errors "s3://bench/$OBJECT_KEY.index" "$STORE_DIR/$ID.index" 2>/dev/null || true
restore_config() { # DIR: makes it, and DIR.yaml, a homeserver.yaml whose data paths are in DIR
    mkdir "$1"
    sed "s#$DATA/#$1/#g" "$CONFIG" >"$1.yaml"
}
# the median of the numbers on stdin
median() { sort -n | awk '{v[NR]=$1} END {print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }
keep() { echo "$2" >>"$WORK/fig.$1"; } # NAME VALUE: one round's figure
med() { median <"$WORK/fig.$1"; }
runs() { tr "\n" " " <"$WORK/fig.$1"; }
# the seconds in "… in 6.9s" / "… at 8.3s" of our restore's log
logged() { grep -o "$1 [0-9.]*s" "$2" | grep -o "[0-9.]*" | tail -1; }
LOG_FILTER=synapse_backup::commands::restore=info,synapse_backup::store::s3::download=debug
failed() { echo "bench/s3.sh: the restore into $WORK/$1 failed:" >&2; cat "$WORK/$1.log" >&2; exit 1; }
for round in $(seq "$ROUNDS"); do
    echo "restore round $round of $ROUNDS" >&2
    restore_config "$WORK/ours-$round"
    sync
    run "synapse-backup restore (S3)" env SYNAPSE_BACKUP_LOG=$LOG_FILTER "$BIN" "${OURS[@]}" \
        --synapse-config "$WORK/ours-$round.yaml" restore "$ID" >/dev/null 2>"$WORK/ours-$round.log" || failed ours-$round
    [ -f "$WORK/ours-$round/homeserver.db" ] || {
        echo "our restore did not land in $WORK/ours-$round" >&2; cat "$WORK/ours-$round.log" >&2; exit 1; }
    keep s3 "$SECS"; keep s3_rss "$RSS"; keep s3_srv "$SRV"
    keep s3_staged "$(logged "files in" "$WORK/ours-$round.log")"
    keep s3_synced "$(logged "synced at" "$WORK/ours-$round.log")"
    keep s3_waited "$(grep -o "reader waited [0-9.]*" "$WORK/ours-$round.log" | grep -o "[0-9.]*$" | tail -1)"
    sync
    run "awscli download to a file" "${AWS[@]}" s3 cp --only-show-errors "s3://bench/$OBJECT_KEY" "$WORK/download-$round"
    keep aws "$SECS"; keep aws_rss "$RSS"; keep aws_srv "$SRV"
    [ -f "$STORE_DIR/$ID" ] || mv "$WORK/download-$round" "$STORE_DIR/$ID"
    # the same download with nothing written (awscli writes a stream in order, as we read one)
    run "awscli download to stdout (into /dev/null)" "${AWS[@]}" s3 cp --only-show-errors "s3://bench/$OBJECT_KEY" - >/dev/null
    keep aws_null "$SECS"; keep aws_null_rss "$RSS"; keep aws_null_srv "$SRV"
    run "our download alone (examples/s3_download)" "$DOWNLOAD" "$ENDPOINT" bench "$OBJECT_KEY" >/dev/null
    keep dl "$SECS"; keep dl_rss "$RSS"; keep dl_srv "$SRV"
    restore_config "$WORK/local-$round"
    sync
    run "synapse-backup restore (local store)" "$BIN" --store "$STORE_DIR" --quiet \
        --synapse-config "$WORK/local-$round.yaml" restore "$ID" >/dev/null 2>"$WORK/local-$round.log" || failed local-$round
    keep local "$SECS"; keep local_rss "$RSS"
    mkdir "$WORK/reference-$round"
    : >"$WORK/ref-rss"
    sync
    run "aws s3 cp - | gpg -d | tar -x" bash -o pipefail -c "
        $TIME_EACH ${AWS[*]} s3 cp --only-show-errors s3://bench/reference.tar.gpg - \
        | $TIME_EACH gpg --batch --quiet --decrypt --pinentry-mode loopback --passphrase-file '$PASSFILE' \
        | $TIME_EACH tar -x -C '$WORK/reference-$round'"
    keep ref "$SECS"; keep ref_rss "$(sort -n "$WORK/ref-rss" | tail -1)"; keep ref_srv "$SRV"
done
rm -rf "$WORK"/ours-* "$WORK"/local-* "$WORK"/reference-* "$WORK"/download-*

# ---- the report ----
row() { # label seconds bytes [rss KiB] server-cpu
    local rss=${4:+$(($4 / 1024)) MiB}
    printf '%-44s %8s %7s %9s %9s\n' "$1" "$2" "$(mbps "$3" "$2")" "${rss:--}" "$5"
}
mrow() { # label NAME bytes: the medians of one restore contender
    local rss= srv=-
    [ -f "$WORK/fig.$2_rss" ] && rss=$(med "$2_rss")
    [ -f "$WORK/fig.$2_srv" ] && srv=$(med "$2_srv")
    row "$1" "$(med "$2")" "$3" "$rss" "$srv"
}
S3=$(med s3); AWSDL=$(med aws); LOCAL=$(med local); REF=$(med ref); DL=$(med dl)
cat <<EOF

S3 mode (s3s-fs on loopback), $((SOURCE_BYTES / 1000000)) MB of Synapse data, backup object $((OBJECT_BYTES / 1000000)) MB
                                              seconds    MB/s  peak RSS  s3s-fs CPU s
$(row "synapse-backup create" "$OUR_CREATE" "$SOURCE_BYTES" "$OUR_CREATE_RSS" "$OUR_CREATE_SRV")
$(row "tar | gpg --symmetric | aws s3 cp -" "$REF_CREATE" "$SOURCE_BYTES" "$REF_CREATE_RSS" "$REF_CREATE_SRV")
$(row "bare PUT, one request (curl)" "$BARE_PUT" "$OBJECT_BYTES" "" "$BARE_PUT_SRV")
$(row "bare multipart upload (awscli)" "$BARE_MPU" "$OBJECT_BYTES" "" "$BARE_MPU_SRV")
restore, medians of $ROUNDS interleaved rounds:
$(mrow "synapse-backup restore (S3)" s3 "$SOURCE_BYTES")
$(mrow "awscli download of our object to a file" aws "$OBJECT_BYTES")
$(mrow "awscli download of it to stdout (/dev/null)" aws_null "$OBJECT_BYTES")
$(mrow "our download alone (S3 store into nothing)" dl "$OBJECT_BYTES")
$(mrow "synapse-backup restore (local store)" local "$SOURCE_BYTES")
$(mrow "aws s3 cp - | gpg -d | tar -x" ref "$SOURCE_BYTES")

each round (s): S3 restore $(runs s3)| awscli download $(runs aws)| to stdout $(runs aws_null)| our download $(runs dl)
                local-store restore $(runs local)| reference $(runs ref)
our S3 restore (medians): read and staged in $(med s3_staged) s, checked and synced at $(med s3_synced) s;
                its reader waited $(med s3_waited) s in all for the download

create:  $(ratio "$REF_CREATE" "$OUR_CREATE")× the gpg+awscli pipeline's speed
         $(ratio "$OUR_CREATE" "$BARE_MPU")× the time of awscli's bare multipart upload of the same bytes
restore: $(ratio "$S3" "$AWSDL")× the time of awscli's bare download of our object (target ≤ 1.3×)
         $(ratio "$REF" "$S3")× the gpg+awscli pipeline's speed
         $(ratio "$S3" "$(med aws_null)")× the time of awscli's download of it to stdout, into /dev/null
         our download alone takes $(ratio "$DL" "$AWSDL")× awscli's time to a file, the local-store restore $(ratio "$LOCAL" "$AWSDL")×
peak RSS: create $((OUR_CREATE_RSS / 1024)) MiB, S3 restore $(($(med s3_rss) / 1024)) MiB (target ≤ 64 MiB)
EOF
