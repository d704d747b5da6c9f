#!/usr/bin/env bash
# Install everything Promptune needs into .venv/ in this checkout. Safe to run again (it skips
# what is already in place).
#   - redis-server and PostgreSQL (Debian packages) when running as root and they are missing, and
#     chromium too when PROMPTUNE_SETUP_BROWSER=1 (the console's browser tests; scripts/test.sh sets it);
#   - python3 -m venv .venv, the exact pins from requirements-dev.txt, then this package (editable).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

have_postgres() {
    command -v initdb >/dev/null 2>&1 || compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null
}

packages=()
command -v redis-server >/dev/null 2>&1 || packages+=(redis-server)
have_postgres || packages+=(postgresql)
if [ "${PROMPTUNE_SETUP_BROWSER:-0}" = 1 ] && ! command -v "${PROMPTUNE_CHROMIUM:-chromium}" >/dev/null 2>&1; then
    packages+=(chromium)
fi
if [ ${#packages[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "setup: installing ${packages[*]} (apt)"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${packages[@]}" >/dev/null
    else
        echo "setup: warning: ${packages[*]} missing and this is not a root shell;" >&2
        echo "       install them (e.g. sudo apt-get install ${packages[*]}) for the demo and tests" >&2
    fi
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
        echo "setup: Python >= 3.11 is required ($PYTHON is $("$PYTHON" -V 2>&1))" >&2; exit 1; }
    echo "setup: creating .venv"
    "$PYTHON" -m venv .venv
fi

# Reinstall only when the pins or the package metadata changed since the last successful run.
stamp=.venv/.promptune-setup
want=$(cat requirements.txt requirements-dev.txt pyproject.toml | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ] || [ ! -x .venv/bin/promptune ]; then
    echo "setup: pip install -r requirements-dev.txt (exact pins; torch comes from the local index)"
    .venv/bin/python -m pip install -q -r requirements-dev.txt
    .venv/bin/python -m pip install -q -e . --no-deps
    echo "$want" > "$stamp"
fi
echo "setup: ready (.venv/bin/promptune)"
