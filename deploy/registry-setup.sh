#!/bin/sh
# One-shot registry setup for the compose stack (service `registry-setup`): create the registry
# buckets replicated on the NATS cluster, then publish the example models that are not in the
# registry yet. Safe to run again: models already present are left alone, so a restart of the
# stack never adds versions or moves `current` behind an operator's back.
#
# Environment:
#   FLOTILLA_NATS_URL         the cluster, comma-separated (read by every flotilla command)
#   REGISTRY_REPLICAS         JetStream replicas of both buckets (default 3)
#   SEED_MODELS               space-separated NAME=FILE pairs to publish when absent
set -eu

replicas="${REGISTRY_REPLICAS:-3}"
seeds="${SEED_MODELS:-linear=/models/linear.json iris=/models/iris.json iris-mlp=/models/mlp.json}"

if flotilla models init --help >/dev/null 2>&1; then
  flotilla models init --replicas "$replicas"
else
  # Builds without `models init`: any registry command creates missing buckets with
  # [registry] replicas, so create them through `models list` with the replicas set.
  echo "registry-setup: this flotilla has no 'models init'; creating buckets via 'models list'"
  FLOTILLA_REGISTRY_REPLICAS="$replicas" flotilla models list >/dev/null
fi

for pair in $seeds; do
  name="${pair%%=*}"
  file="${pair#*=}"
  if flotilla models show "$name" --json >/dev/null 2>&1; then
    echo "registry-setup: $name is already in the registry; leaving it as it is"
  else
    flotilla models publish "$name" "$file"
  fi
done
flotilla models list
