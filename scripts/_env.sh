# Shared by scripts/run and scripts/test: create .venv with Python 3.11 and install pinned packages.
# Re-installs only when a requirements file changed (hash stamp in .venv).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
  echo "accessctl needs Python 3.11 (found $("$PYTHON" --version 2>&1)); set PYTHON=/path/to/python3.11" >&2
  exit 1
fi
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
VENV_PY="$ROOT/.venv/bin/python"

install_requirements() {  # $@: requirements files installed normally
  local stamp=".venv/.installed-$(cat "$@" requirements-nodeps.txt | sha256sum | cut -c1-16)"
  if [ ! -f "$stamp" ]; then
    echo "==> installing Python packages into .venv (first run takes a few minutes)"
    "$VENV_PY" -m pip install --quiet --disable-pip-version-check --upgrade pip
    "$VENV_PY" -m pip install --quiet --disable-pip-version-check $(printf -- '-r %s ' "$@")
    # facenet-pytorch pins old torch/torchvision: take only its code (MTCNN weights ship in the wheel).
    "$VENV_PY" -m pip install --quiet --disable-pip-version-check --no-deps -r requirements-nodeps.txt
    touch "$stamp"
  fi
}
