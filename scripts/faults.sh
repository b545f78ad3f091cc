#!/usr/bin/env bash
# End-to-end fault injection (issue 8): real nats-server and `flotilla worker` processes on
# 127.0.0.1, every wait bounded, everything stopped at the end.
#
#   scripts/faults.sh [SCENARIO...]      # default: all four
#
#   broker-restart  nats-server killed under a file-serving worker and started again after
#                   0, 0, 1, 3, 5 and 10 s: serving again within 2 s of it accepting
#                   connections, for a new client and for one that stayed connected
#   sigkill         one of two workers SIGKILLed under load from a retrying client (3 rounds)
#   cluster         3-node JetStream cluster, registry buckets with 3 replicas, two registry
#                   workers: the manifests stream's leader is killed, a new version published
#                   and served, the node restarted (3 rounds)
#   sigterm         SIGTERM to a worker under load 100 times (every accepted request answered,
#                   exit 0 within 2 s), then to 5 idle workers (exit 0 within 1 s)
#
# Prints each scenario's figures and PASS/FAIL; exits 1 if any failed. The figures from a run
# are in docs/reliability.md. Needs nats-server on PATH; FAULTS_VERBOSE=1 shows retries.
set -euo pipefail
cd "$(dirname "$0")/.."

scenarios=("$@")
if [ ${#scenarios[@]} -eq 0 ]; then
  scenarios=(broker-restart sigkill cluster sigterm)
fi

command -v nats-server >/dev/null || { echo "nats-server not found on PATH" >&2; exit 2; }
cargo build --release --locked --quiet --bin flotilla --example faults
faults=target/release/examples/faults

failed=()
for s in "${scenarios[@]}"; do
  echo "== $s"
  start=$(date +%s)
  # Each scenario bounds its own waits; this is a backstop against anything unforeseen.
  if timeout --kill-after=10 1800 "$faults" --flotilla target/release/flotilla "$s"; then
    :
  else
    failed+=("$s")
  fi
  echo "   ($(( $(date +%s) - start )) s)"
done

if [ ${#failed[@]} -gt 0 ]; then
  echo "FAILED: ${failed[*]}"
  exit 1
fi
echo "all scenarios passed"
