#!/usr/bin/env bash
# Creates the Python environment the tests' scripts use and installs
# scripts/requirements-gateway.txt (tritonclient, Flask, numpy) and
# scripts/requirements-deploy.txt (jsonschema, PyYAML for the compose check) into it: .venv in
# the repository, or $FLOTILLA_VENV.
# Idempotent: when the environment already holds exactly these pins it returns at once.
#
#   bash scripts/venv.sh && cargo test
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${FLOTILLA_VENV:-.venv}"
case "$venv" in /*) ;; *) venv="$root/$venv" ;; esac
requirements=("$root/scripts/requirements-gateway.txt" "$root/scripts/requirements-deploy.txt")
stamp="$venv/.requirements.sha256"
want="$(cat "${requirements[@]}" | sha256sum | cut -d' ' -f1)"

if [ -x "$venv/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
    echo "venv.sh: $venv is up to date"
    exit 0
fi
python="${PYTHON:-python3}"
command -v "$python" >/dev/null || { echo "venv.sh: $python not found; install Python 3.9 or newer" >&2; exit 1; }
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
for r in "${requirements[@]}"; do
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$r"
done
"$venv/bin/python" -c "import tritonclient.http, flask, numpy, jsonschema, yaml"
echo "$want" > "$stamp"
echo "venv.sh: installed the scripts' requirements into $venv"
