#!/usr/bin/env bash
# Runs the shipped rules and every dashboard query against a real Prometheus scraping a real
# worker. Usage:
#
#   scripts/check_prometheus_live.sh PORT            # worker metrics on 127.0.0.1:PORT
#   scripts/check_prometheus_live.sh HOST:PORT
#
# Starts `prometheus` (Debian's package, or $PROMETHEUS_BIN) on a free loopback port with a
# temporary config that scrapes the worker every second as job "flotilla-worker" (the job the
# rules and the dashboard name) and loads deploy/prometheus/rules/*.yml, evaluated every
# second. Then it checks, and exits 1 saying what failed if any check does:
#
#   - the target is up;
#   - every dashboard query (scripts/dashboard_queries.py) is accepted by /api/v1/query
#     (status "success": a parse or evaluation error fails);
#   - the MUST_HAVE_DATA panels below return data: every query of each of them returns at
#     least one series with a number (not NaN, which is what ratios and quantiles of an idle
#     worker give), waited for up to $LIVE_CHECK_TIMEOUT seconds (default 60), so the worker
#     must be under load (answering predictions) meanwhile;
#   - no recording or alerting rule reports an evaluation error (/api/v1/rules health "err",
#     e.g. many-to-many matching, which only shows up on real series).
#
# Prometheus is stopped and its temporary directory removed on exit, whatever happens.
set -euo pipefail

# Panels a healthy fleet under load fills, with one worker and nothing else scraped (no NATS
# exporter, no gateway, no version changes, no load failures). Titles as in
# deploy/grafana/dashboards/flotilla.json.
MUST_HAVE_DATA=(
  "Workers up"
  "Requests/s"
  "5xx ratio"
  "Requests/s by model and code"
  "Error ratio"
  "Requests/s by version"
  "Latency p50 / p99"
  "Queue time vs compute time"
  "Batch size (rows)"
  "Queued rows per model (autoscaling signal)"
  "Workers per model"
  "Versions served per worker"
  "Distinct versions per model"
  "Queued rows vs limit"
)

if [ $# -ne 1 ]; then
  echo "usage: $0 PORT|HOST:PORT   (the worker's metrics address)" >&2
  exit 2
fi
target="$1"
case "$target" in
  *:*) ;;
  *) target="127.0.0.1:$target" ;;
esac

root="$(cd "$(dirname "$0")/.." && pwd)"
prometheus_bin="${PROMETHEUS_BIN:-prometheus}"
timeout_secs="${LIVE_CHECK_TIMEOUT:-60}"
if ! command -v "$prometheus_bin" >/dev/null 2>&1; then
  echo "check_prometheus_live: '$prometheus_bin' not found (Debian/Ubuntu: apt-get install prometheus)" >&2
  exit 2
fi

tmp="$(mktemp -d)"
prometheus_pid=""
cleanup() {
  if [ -n "$prometheus_pid" ] && kill -0 "$prometheus_pid" 2>/dev/null; then
    kill "$prometheus_pid" 2>/dev/null || true
    wait "$prometheus_pid" 2>/dev/null || true
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
rules=()
for f in "$root"/deploy/prometheus/rules/*.yml; do rules+=("    - $f"); done
cat >"$tmp/prometheus.yml" <<EOF
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files:
$(printf '%s\n' "${rules[@]}")
scrape_configs:
  - job_name: flotilla-worker
    static_configs:
      - targets: ["$target"]
EOF

python3 "$root/scripts/dashboard_queries.py" >"$tmp/queries.jsonl"

"$prometheus_bin" \
  --config.file="$tmp/prometheus.yml" \
  --storage.tsdb.path="$tmp/data" \
  --web.listen-address="127.0.0.1:$port" \
  --log.level=warn \
  >"$tmp/prometheus.log" 2>&1 &
prometheus_pid=$!
echo "check_prometheus_live: prometheus (pid $prometheus_pid) on 127.0.0.1:$port scraping $target"

status=0
python3 - "http://127.0.0.1:$port" "$timeout_secs" "$tmp/queries.jsonl" "${MUST_HAVE_DATA[@]}" <<'PY' || status=$?
import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

base, timeout, queries_file, must_have = sys.argv[1], float(sys.argv[2]), sys.argv[3], sys.argv[4:]
queries = [json.loads(line) for line in open(queries_file, encoding="utf-8") if line.strip()]
deadline = time.monotonic() + timeout


def get(path, params=None):
    """(http status, decoded JSON body or None)."""
    url = base + path
    data = urllib.parse.urlencode(params).encode() if params is not None else None
    try:
        with urllib.request.urlopen(url, data=data, timeout=5) as r:
            status, body = r.status, r.read()
    except urllib.error.HTTPError as e:
        status, body = e.code, e.read()
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None, None
    try:
        return status, json.loads(body)
    except ValueError:  # /-/ready answers plain text
        return status, None


def wait(what, ready):
    while time.monotonic() < deadline:
        if ready():
            return True
        time.sleep(0.5)
    print(f"FAIL: {what} within {timeout:g}s")
    return False


def query(expr):
    return get("/api/v1/query", {"query": expr})


if not wait("prometheus ready", lambda: get("/-/ready")[0] == 200):
    sys.exit(1)


def target_up():
    status, body = query('up{job="flotilla-worker"}')
    result = (body or {}).get("data", {}).get("result", [])
    return status == 200 and any(s["value"][1] == "1" for s in result)


if not wait("worker target up (is the worker's metrics endpoint at the address given?)", target_up):
    sys.exit(1)
print("ok: worker target up")

failures = []
titles = {q["panel"] for q in queries}
for name in must_have:
    if name not in titles:
        failures.append(f"MUST_HAVE_DATA names {name!r}, which is no dashboard panel")

# Every query must be accepted: a parse or evaluation error is a broken panel.
for q in queries:
    status, body = query(q["expr"])
    if status != 200 or not body or body.get("status") != "success":
        error = (body or {}).get("error", f"HTTP {status}")
        failures.append(f"{q['panel']} [{q['ref']}]: query failed: {error}\n    {q['expr']}")



def has_data(body):
    """Some series with a number: an idle worker's ratios and quantiles are NaN, not data."""
    result = (body or {}).get("data", {}).get("result", [])
    return any(s["value"][1] not in ("NaN", "+Inf", "-Inf") for s in result)


# Panels a loaded worker fills: wait for recording rules and rates to have data.
pending = [q for q in queries if q["panel"] in must_have]
while pending and time.monotonic() < deadline:
    still = []
    for q in pending:
        status, body = query(q["expr"])
        if not (status == 200 and has_data(body)):
            still.append(q)
    pending = still
    if pending:
        time.sleep(1)
for q in pending:
    failures.append(f"{q['panel']} [{q['ref']}]: no data after {timeout:g}s (is the worker under load?)\n    {q['expr']}")
filled = sorted({q["panel"] for q in queries if q["panel"] in must_have} - {q["panel"] for q in pending})
print(f"ok: {len(queries)} dashboard queries accepted; {len(filled)} of {len(must_have)} must-have panels have data")

# Rules that fail on real series (e.g. many-to-many matching) report health "err".
status, body = get("/api/v1/rules")
if status != 200 or not body:
    failures.append(f"/api/v1/rules: HTTP {status}")
else:
    groups = body["data"]["groups"]
    rules = [r for g in groups for r in g["rules"]]
    if not rules:
        failures.append("no rules loaded from deploy/prometheus/rules")
    for g in groups:
        for r in g["rules"]:
            if r.get("health") == "err":
                failures.append(f"rule {r['name']} (group {g['name']}): {r.get('lastError')}")
    print(f"ok: {len(rules)} rules loaded in {len(groups)} groups")

for f in failures:
    print("FAIL:", f)
sys.exit(1 if failures else 0)
PY

if [ "$status" -ne 0 ]; then
  echo "check_prometheus_live: FAILED; prometheus log:"
  tail -n 30 "$tmp/prometheus.log" | sed 's/^/  /'
  exit 1
fi
echo "check_prometheus_live: all checks passed"
