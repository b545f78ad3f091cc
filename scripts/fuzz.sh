#!/usr/bin/env bash
# Fuzz flotilla's parsers of untrusted bytes: the request decoder (JSON and MessagePack), the
# artifact parser and the manifest parser, N inputs each (default 1,000,000), on stable Rust.
#
#   scripts/fuzz.sh [N] [extra flotilla-fuzz run flags, e.g. --seed 7 --target artifact]
#
# Prints inputs, seconds and inputs/s per target; exits non-zero on any finding, with each
# distinct crashing input written to fuzz/crashes/<target>-<index>.bin (and a .txt saying
# why). Minimise one with `target/release/flotilla-fuzz minimize --target T FILE`.
#
# flotilla's crates are built with overflow checks, so an arithmetic overflow is a finding rather than a
# silently wrapped number; children run with a 1 GiB heap ceiling and a 2 MiB stack (a
# worker thread's), so a declared length that reserves memory or a nesting that recurses too
# deep aborts there and is pinned to its input. `ulimit -v` caps the whole run as a backstop.
set -euo pipefail
cd "$(dirname "$0")/.."

inputs="${1:-1000000}"
shift || true

# Overflow checks for flotilla's own crates only, so the dependencies are the same build as
# `cargo build --release` and are not compiled twice.
checks=()
for crate in flotilla-proto flotilla-model flotilla-registry flotilla-fuzz; do
  checks+=(--config "profile.release.package.\"$crate\".overflow-checks=true")
done
cargo build "${checks[@]}" --release --locked -p flotilla-fuzz --quiet
exe=target/release/flotilla-fuzz

# 8 GiB of address space: far above the 1 GiB heap ceiling, so only a runaway that escapes
# the allocator (there should be none) trips it.
ulimit -v $((8 * 1024 * 1024))
exec "$exe" run --inputs "$inputs" "$@"
