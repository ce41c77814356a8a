#!/usr/bin/env bash
# One entry point for people and CI: `./dev.sh demo` sets everything up and opens
# JupyterLab with the extension on and a demo model served; `./dev.sh test` sets
# everything up and runs the whole test suite.
set -euo pipefail
cd "$(dirname "$0")"

VENV=.venv

find_python() {
  for candidate in "${PYTHON:-}" python3.13 python3.12 python3.11 python3; do
    [ -n "$candidate" ] || continue
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      echo "$candidate"; return 0
    fi
  done
  echo "jupyter-tfserve needs Python 3.11 or newer on PATH (or PYTHON=/path/to/python)." >&2
  return 1
}

setup() {
  local stamp="$VENV/.setup-stamp" want
  want=$(cat pyproject.toml dev.sh | sha256sum | cut -d' ' -f1)
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    return 0
  fi
  echo "==> setting up $VENV (first run downloads TensorFlow, a few minutes)" >&2
  if [ ! -x "$VENV/bin/python" ]; then
    "$(find_python)" -m venv "$VENV"
  fi
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  "$VENV/bin/python" -m pip install --quiet -e ".[test]"
  echo "$want" > "$stamp"
}

cmd=${1:-demo}
shift || true
case "$cmd" in
  demo)
    setup
    # JupyterLab with the extension on and half_plus_two served under {base_url}tfserve/.
    root_flag=()
    if [ "$(id -u)" = 0 ]; then root_flag=(--allow-root); fi
    exec "$VENV/bin/jupyter" lab --TFServeExtension.demo_model=True "${root_flag[@]}" "$@"
    ;;
  serve-demo)
    setup
    # The engine alone (no Jupyter): REST on :8501, gRPC on :8500.
    exec "$VENV/bin/jupyter-tfserve" demo "$@"
    ;;
  test)
    setup
    export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
    "$VENV/bin/ruff" check jupyter_tfserve tests benchmarks
    exec "$VENV/bin/python" -m pytest "$@"
    ;;
  bench)
    setup
    "$VENV/bin/python" -m pip install --quiet -e ".[test,bench]"
    if ! command -v wrk >/dev/null 2>&1; then
      echo "==> installing Debian's wrk (the HTTP load generator)" >&2
      if [ "$(id -u)" = 0 ]; then apt-get install -y -q wrk >/dev/null || { apt-get update -q && apt-get install -y -q wrk; }
      else sudo apt-get install -y -q wrk; fi
    fi
    export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
    "$VENV/bin/python" benchmarks/startup_to_available.py
    exec "$VENV/bin/python" benchmarks/serving_benchmark.py "$@"
    ;;
  setup)
    setup
    ;;
  *)
    echo "usage: ./dev.sh demo [jupyter lab args] | serve-demo | test [pytest args] | bench [--quick] | setup" >&2
    exit 2
    ;;
esac
