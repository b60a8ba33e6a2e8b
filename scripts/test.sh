#!/usr/bin/env bash
# The whole test suite: formatting, lints, then every test (unit, integration, property,
# scenario). `.ci/run` runs exactly this after installing what it needs.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets --quiet -- -D warnings
echo "== cargo test"
cargo test --all-features
echo "== benches compile"
cargo bench --no-run --quiet
