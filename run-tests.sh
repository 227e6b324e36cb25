#!/usr/bin/env bash
# Install volumecap with its test dependencies into .venv and run the tests.
# Arguments go to pytest, for example: bash run-tests.sh -k calendar
set -euo pipefail
cd "$(dirname "$0")"

venv=.venv
if [[ ! -x "$venv/bin/python" ]]; then
    python3 -m venv "$venv"
fi
"$venv/bin/pip" install --quiet --upgrade pip
# Editable in compat mode: the default editable mode installs an import hook,
# and twistd then does not find the plugins under twisted/plugins.
"$venv/bin/pip" install --quiet -e '.[test]' --config-settings editable_mode=compat
"$venv/bin/python" -m mypy
exec "$venv/bin/python" -m pytest "$@"
