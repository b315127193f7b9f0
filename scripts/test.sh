#!/usr/bin/env bash
# The test suite, as a newcomer and CI run it: installs what the tests need first (Debian
# packages, the S3 servers), then runs every test. Extra arguments go to `cargo test`.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
bash "$repo/.ci/install-test-deps.sh"
cargo test --workspace --manifest-path "$repo/Cargo.toml" "$@"
