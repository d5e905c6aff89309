#!/usr/bin/env bash
# The Python 3.12 environment of the peer readers (rasteret needs Python >= 3.12) and of py-spy.
# Usage: benchmarks/setup_venv.sh [VENV_DIR] ; then RASTERDUCK_BENCH_PY312=VENV_DIR/bin/python if not the default.
set -euo pipefail
VENV="${1:-/work/venv-bench312}"
PY312="${PYTHON312:-}"
if [ -z "$PY312" ]; then
  for c in python3.12 "$HOME/.pyenv/versions/3.12.1/bin/python" "$HOME"/.pyenv/versions/3.12*/bin/python; do
    if command -v "$c" >/dev/null 2>&1; then PY312="$c"; break; fi
  done
fi
[ -n "$PY312" ] || { echo "no Python 3.12 found; set PYTHON312=/path/to/python3.12" >&2; exit 1; }
"$PY312" -m venv "$VENV"
"$VENV/bin/pip" install -q "rasteret==0.4.1" "async-tiff==0.7.2" "obstore==0.12.1" "py-spy==0.4.3"
"$VENV/bin/python" -c "import rasteret, async_tiff, obstore, rasterio; print('ok', rasteret.__version__)"
