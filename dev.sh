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
  local stamp="$VENV/.setup-stamp" lab_stamp="$VENV/.labextension-stamp" want lab_want
  local lab_dest="$VENV/share/jupyter/labextensions/jupyter-tfserve" lab_log="$VENV/labextension-build.log"
  want=$(cat pyproject.toml dev.sh | sha256sum | cut -d' ' -f1)
  # The JupyterLab panel's sources and build settings (not node_modules/ or lib/).
  lab_want=$(cd labextension &&
    find package.json yarn.lock .yarnrc.yml tsconfig.json install.json src style -type f -print0 |
    sort -z | xargs -0 sha256sum | sha256sum | cut -d' ' -f1)
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "==> setting up $VENV (first run downloads TensorFlow and the panel's npm packages, a few minutes)" >&2
    if [ ! -x "$VENV/bin/python" ]; then
      "$(find_python)" -m venv "$VENV"
    fi
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    # The build hook (hatch-jupyter-builder) runs `jlpm install` and `jlpm build` in labextension/
    # (Node.js needed), and the editable install puts the built panel in $lab_dest for JupyterLab.
    "$VENV/bin/python" -m pip install --quiet -e ".[test]"
    # tritonclient (the V2 protocol tests' client) pins protobuf < 7: its own environment, inside $VENV.
    if [ ! -x "$VENV/triton-client/bin/python" ]; then "$(find_python)" -m venv "$VENV/triton-client"; fi
    "$VENV/triton-client/bin/python" -m pip install --quiet "tritonclient[http,grpc]" numpy
    echo "$lab_want" > "$lab_stamp"
    echo "$want" > "$stamp"
  fi
  # The panel's sources changed since: rebuild it and put it where JupyterLab looks.
  if [ ! -f "$lab_stamp" ] || [ "$(cat "$lab_stamp")" != "$lab_want" ] || [ ! -f "$lab_dest/package.json" ]; then
    echo "==> building the JupyterLab panel (labextension/)" >&2
    if ! (cd labextension && export PATH="$OLDPWD/$VENV/bin:$PATH" && jlpm install && jlpm build) >"$lab_log" 2>&1; then
      tail -n 40 "$lab_log" >&2
      echo "!!  building the JupyterLab panel failed (whole log: $lab_log)" >&2
      return 1
    fi
    rm -rf "$lab_dest/static"
    mkdir -p "$lab_dest"
    cp -R jupyter_tfserve/labextension/. "$lab_dest/"
    cp labextension/install.json "$lab_dest/"
    echo "$lab_want" > "$lab_stamp"
  fi
  # Debian's chromium, for the browser test (Playwright cannot download its own browser here).
  if [ ! -x /usr/bin/chromium ]; then
    echo "==> installing Debian's chromium (for tests/e2e, the JupyterLab browser test)" >&2
    local sudo=()
    if [ "$(id -u)" != 0 ]; then sudo=(sudo -n); fi
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1 ||
      { "${sudo[@]}" apt-get update -q >/dev/null &&
        "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null; } ||
      echo "!!  could not install chromium (needs root or sudo): tests/e2e/test_lab_panel.py will be skipped" >&2
  fi
}

cmd=${1:-demo}
shift || true
case "$cmd" in
  demo)
    setup
    # JupyterLab with the extension on, half_plus_two served under {base_url}tfserve/, the TF Serving
    # panel on the left and the quickstart notebook open.
    root_flag=()
    if [ "$(id -u)" = 0 ]; then root_flag=(--allow-root); fi
    exec "$VENV/bin/jupyter" lab --TFServeExtension.demo_model=True \
      --ServerApp.default_url=/lab/tree/notebooks/01-quickstart.ipynb \
      --LabApp.default_url=/lab/tree/notebooks/01-quickstart.ipynb "${root_flag[@]}" "$@"
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
