#!/usr/bin/env bash
# Installs the S3-protocol servers the S3 tests and the S3 benchmark run against (idempotent):
#   s3s-fs  — Rust, checks SigV4, keeps data on disk (0.15+ needs a newer rustc than ours)
#   moto    — Python, a second independent implementation (its server also brings boto3, which
#             the tests use for raw bucket operations)
#   awscli  — only for bench/s3.sh (the gpg + aws s3 cp pipelines it compares against)
set -euo pipefail

S3S_VERSION=0.14.1
MOTO_VERSION=5.2.5

if command -v s3s-fs >/dev/null && s3s-fs --version 2>/dev/null | grep -q "$S3S_VERSION"; then
    echo "s3s-fs $S3S_VERSION already installed"
else
    cargo install --locked s3s-fs --version "$S3S_VERSION" --features binary
fi

if python3 -c "import moto, sys; sys.exit(moto.__version__ != '$MOTO_VERSION')" 2>/dev/null \
    && command -v moto_server >/dev/null; then
    echo "moto $MOTO_VERSION already installed"
else
    python3 -m pip install --quiet "moto[server]==$MOTO_VERSION"
    # pyenv makes the moto_server command visible only after a rehash
    if command -v pyenv >/dev/null; then pyenv rehash || true; fi
fi

if [ "${WITH_AWSCLI:-0}" = 1 ] && ! command -v aws >/dev/null; then
    python3 -m pip install --quiet awscli
fi
