#!/usr/bin/env bash
# What the tests need beyond the Rust toolchain, installed only when missing (idempotent).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive

need=()
command -v gpg >/dev/null || need+=(gnupg)
command -v sqlite3 >/dev/null || need+=(sqlite3)
command -v python3 >/dev/null || need+=(python3)
command -v tar >/dev/null || need+=(tar)
[ -x /usr/bin/time ] || need+=(time)
if [ ${#need[@]} -gt 0 ]; then
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi

if [ -f "$here/install-s3-servers.sh" ]; then
  bash "$here/install-s3-servers.sh"
fi
