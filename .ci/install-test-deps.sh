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
# the real-Synapse tests: setpriv drops root to Synapse's user; Debian's python3 (readable by
# every user, unlike an interpreter under /root) carries Synapse's virtualenv
command -v setpriv >/dev/null || need+=(util-linux)
if [ "$(id -u)" = 0 ] && ! /usr/bin/python3 -c 'import ensurepip, venv' 2>/dev/null; then
  need+=(python3 python3-venv)
fi
if [ ${#need[@]} -gt 0 ]; then
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi

# Synapse's users: the official image's uid/gid 991, and Debian's package user (a system uid,
# group nogroup, as its postinst's `adduser --system` makes it). Tests read the ids with `id`.
if [ "$(id -u)" = 0 ]; then
  getent group 991 >/dev/null || groupadd -g 991 synapse
  id -u synapse >/dev/null 2>&1 || useradd --system -u 991 -g 991 -M -d /nonexistent -s /usr/sbin/nologin synapse
  id -u matrix-synapse >/dev/null 2>&1 ||
    useradd --system -g nogroup -M -d /var/lib/matrix-synapse -s /usr/sbin/nologin matrix-synapse
fi

# Synapse itself, pinned, in a virtualenv. As root it is built on Debian's python3, so that the
# synapse user can run it; kept when it already has this version and that user can read its
# interpreter.
synapse_version=1.163.2
venv=${SYNAPSE_VENV:-/opt/synapse-venv}
venv_ok() {
  [ -x "$venv/bin/python" ] || return 1
  [ "$("$venv/bin/python" -c 'import synapse; print(synapse.__version__)' 2>/dev/null)" = "$synapse_version" ] || return 1
  if [ "$(id -u)" = 0 ]; then
    setpriv --reuid 991 --regid 991 --clear-groups test -r "$(readlink -f "$venv/bin/python")" || return 1
  fi
}
if ! venv_ok; then
  base=python3; [ "$(id -u)" = 0 ] && base=/usr/bin/python3
  parent=$(dirname "$venv"); mkdir -p "$parent" 2>/dev/null || $sudo mkdir -p "$parent"
  as=""; [ -w "$parent" ] || as=$sudo
  old=""
  if [ -e "$venv" ]; then old="$venv.old.$$"; $as mv "$venv" "$old"; fi
  if (umask 022 && $as "$base" -m venv "$venv" &&
      $as "$venv/bin/pip" install -q --disable-pip-version-check "matrix-synapse==$synapse_version"); then
    [ -z "$old" ] || $as rm -rf "$old"
  else
    $as rm -rf "$venv"; [ -z "$old" ] || $as mv "$old" "$venv"
    echo "install-test-deps: could not install matrix-synapse==$synapse_version into $venv" >&2
    exit 1
  fi
fi

if [ -f "$here/install-s3-servers.sh" ]; then
  bash "$here/install-s3-servers.sh"
fi
