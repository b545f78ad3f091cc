# Shared by the benchmark scripts that start their own nats-server (bench_echo.sh,
# bench_memory.sh, bench_served_mlp.sh, profile_worker.sh, bench_gateway.sh,
# bench_served_text.sh); sourced, not run.
#
# Sets `root` (the repository), `dir` (a scratch directory), `url` (a throwaway nats-server
# on a free loopback port, already accepting connections) and `npid` (its pid), and stops
# every pid added to `pids` and removes `dir` when the script exits. Needs `probe` (natsprobe)
# set before `wait_for_answer` is called.

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dir=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT
# The server picks its own port and writes it to a file named after its pid: probing for a
# free port first could hand the same port to two scripts run at once.
nats-server -a 127.0.0.1 -p -1 -sd "$dir/js" --ports_file_dir "$dir" >/dev/null 2>&1 &
npid=$!
pids+=($npid)
port=
for _ in $(seq 200); do
  ports="$dir/nats-server_$npid.ports"
  [ -s "$ports" ] && port=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["nats"][0].rsplit(":", 1)[1])' "$ports" 2>/dev/null) &&
    (echo >/dev/tcp/127.0.0.1/"$port") 2>/dev/null && break
  port=
  sleep 0.05
done
[ -n "$port" ] || { echo "nats-server did not start" >&2; exit 1; }
url="nats://127.0.0.1:$port"

# wait_for_answer SUBJECT PAYLOAD: returns once a request to SUBJECT is answered (at most 10 s).
wait_for_answer() {
  for _ in $(seq 200); do
    "$probe" --url "$url" load --subject "$1" --payload "$2" --concurrency 1 --seconds 0.05 2>/dev/null |
      grep -q '"ok":[1-9]' && return 0
    sleep 0.05
  done
}

# ticks PID: CPU time (user + system, in clock ticks) the process has used so far.
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
