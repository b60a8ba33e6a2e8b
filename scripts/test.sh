#!/usr/bin/env bash
# The whole test suite: formatting, lints, benchmark builds, then every test (unit,
# integration, property, scenario). `.ci/run` runs exactly this after installing what it
# needs. The last line totals the tests of every test binary.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets --quiet -- -D warnings
echo "== benches compile"
cargo bench --no-run --quiet
echo "== local broker for the Kafka tests (installed once, here, rather than by parallel tests)"
scripts/broker.sh bin
echo "== cargo test"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --all-features 2>&1 | tee "$log"
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
