# Shared by scripts/run and scripts/test: create .venv with Python 3.11 and install pinned packages.
# Sourcing this file only defines functions (tests/scripts/test_env_sh.py drives them with a fake pip);
# the scripts call venv_ensure, then requirements_install with the requirements files they need.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV_PY="$ROOT/.venv/bin/python"

venv_ensure() {  # .venv with Python 3.11 (PYTHON=/path/to/python3.11 to choose one)
  local python="${PYTHON:-$(command -v python3.11 || command -v python3)}"
  if ! "$python" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
    echo "accessctl needs Python 3.11 (found $("$python" --version 2>&1)); set PYTHON=/path/to/python3.11" >&2
    exit 1
  fi
  [ -x "$ROOT/.venv/bin/python" ] || "$python" -m venv "$ROOT/.venv"
}

requirement_stamp() {  # $1: requirements file -> its stamp: .venv/.installed/<file>-<hash of its content>
  echo "$ROOT/.venv/.installed/$(basename "$1")-$(sha256sum <"$ROOT/$1" | cut -c1-16)"
}

requirements_install() {  # $@: requirements files installed normally; requirements-nodeps.txt always, --no-deps
  # One stamp per requirements file and content: a set installed by one script counts for the other,
  # and only the files that are new or changed since their last install are installed again.
  local missing=() file nodeps=""
  for file in "$@"; do
    [ -f "$(requirement_stamp "$file")" ] || missing+=("$file")
  done
  [ -f "$(requirement_stamp requirements-nodeps.txt)" ] || nodeps=1
  [ ${#missing[@]} -gt 0 ] || [ -n "$nodeps" ] || return 0
  echo "==> installing Python packages into .venv: ${missing[*]} ${nodeps:+requirements-nodeps.txt} (first run takes a few minutes)"
  "$VENV_PY" -m pip install --quiet --disable-pip-version-check --upgrade pip
  mkdir -p "$ROOT/.venv/.installed"
  if [ ${#missing[@]} -gt 0 ]; then
    "$VENV_PY" -m pip install --quiet --disable-pip-version-check $(printf -- "-r $ROOT/%s " "${missing[@]}")
    for file in "${missing[@]}"; do touch "$(requirement_stamp "$file")"; done
  fi
  if [ -n "$nodeps" ]; then
    # facenet-pytorch pins old torch/torchvision: take only its code (MTCNN weights ship in the wheel).
    "$VENV_PY" -m pip install --quiet --disable-pip-version-check --no-deps -r "$ROOT/requirements-nodeps.txt"
    touch "$(requirement_stamp requirements-nodeps.txt)"
  fi
}

deploy_check() {  # Django's deploy checklist as a production deployment runs it (HTTPS, a generated key)
  local var
  var="$(mktemp -d)"
  ACCESSCTL_VAR_DIR="$var" ACCESSCTL_PRODUCTION=1 ACCESSCTL_HTTPS=1 DJANGO_ALLOWED_HOSTS=accessctl.example.com \
    DJANGO_SECRET_KEY="$("$VENV_PY" -c 'import secrets; print(secrets.token_urlsafe(64))')" DJANGO_DEBUG=0 \
    "$VENV_PY" "$ROOT/manage.py" check --deploy --fail-level WARNING
  rm -rf "$var"
}
