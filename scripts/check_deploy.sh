#!/usr/bin/env bash
# Checks everything under deploy/ and docker-compose.yml without Docker or a network:
#
#   1. promtool check config   deploy/prometheus/prometheus.yml (and the rule files it names)
#   2. promtool check rules    deploy/prometheus/rules/*.yml
#   3. promtool test rules     deploy/prometheus/tests/*.yml
#   4. every dashboard query parses (scripts/dashboard_queries.py --as-rules | promtool)
#   5. docker-compose.yml against the vendored Compose Specification schema, bind mounts,
#      cross-references, alert test coverage, runbook links (scripts/check_deploy.py)
#   6. the NATS config (nats-server -t), when nats-server is installed
#   7. shell syntax of the deploy scripts
#   8. `docker compose config -q`, when the Docker Compose plugin is installed
#
# Needs promtool (Debian/Ubuntu: apt-get install prometheus) and python3. The Python checks
# run in the virtualenv ${FLOTILLA_VENV:-.venv}, created with the pinned
# scripts/requirements-deploy.txt when missing. Runs every check, prints what failed, and
# exits non-zero if anything did.
#
#   scripts/check_deploy.sh
#   FLOTILLA_VENV=/work/venvs/deploy scripts/check_deploy.sh
set -uo pipefail
cd "$(dirname "$0")/.."

failed=()
step() {
  local name="$1"
  shift
  echo "==> $name"
  if "$@"; then
    echo "    ok"
  else
    echo "    FAILED: $name"
    failed+=("$name")
  fi
}

if ! command -v promtool >/dev/null 2>&1; then
  echo "promtool not found: install Prometheus' tools (Debian/Ubuntu: apt-get install prometheus)" >&2
  exit 2
fi
promtool --version 2>&1 | head -n1

step "promtool check config" promtool check config deploy/prometheus/prometheus.yml
step "promtool check rules" promtool check rules deploy/prometheus/rules/*.yml
step "promtool test rules" promtool test rules deploy/prometheus/tests/*.yml

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

dashboard_queries_parse() {
  python3 scripts/dashboard_queries.py --as-rules >"$tmp/dashboard.rules.json" &&
    promtool check rules "$tmp/dashboard.rules.json"
}
step "dashboard queries parse" dashboard_queries_parse

venv="${FLOTILLA_VENV:-.venv}"
python_checks() {
  if ! "$venv/bin/python" -c 'import jsonschema, yaml' >/dev/null 2>&1; then
    echo "    setting up $venv (scripts/requirements-deploy.txt)"
    { [ -x "$venv/bin/python" ] || python3 -m venv "$venv"; } &&
      "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
        -r scripts/requirements-deploy.txt || return 1
  fi
  "$venv/bin/python" scripts/check_deploy.py
}
step "compose schema and cross-references" python_checks

nats_config() {
  if ! command -v nats-server >/dev/null 2>&1; then
    echo "    nats-server not installed: skipped"
    return 0
  fi
  local node
  for node in nats-1 nats-2 nats-3; do
    NATS_SERVER_NAME="$node" nats-server -t -c deploy/nats/nats.conf || return 1
  done
}
step "NATS config" nats_config

shell_syntax() {
  sh -n deploy/registry-setup.sh && bash -n scripts/check_deploy.sh &&
    bash -n scripts/check_prometheus_live.sh
}
step "shell syntax" shell_syntax

compose_config() {
  if ! docker compose version >/dev/null 2>&1; then
    echo "    docker compose not available: skipped (run 'docker compose config -q' where it is)"
    return 0
  fi
  GRAFANA_ADMIN_PASSWORD="${GRAFANA_ADMIN_PASSWORD:-check-only}" docker compose config -q
}
step "docker compose config" compose_config

if [ "${#failed[@]}" -gt 0 ]; then
  echo
  echo "check_deploy: ${#failed[@]} check(s) failed:"
  printf '  - %s\n' "${failed[@]}"
  exit 1
fi
echo
echo "check_deploy: all checks passed"
