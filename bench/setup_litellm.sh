#!/usr/bin/env bash
# Install the LiteLLM proxy that bench/run.py compares routedeck with, in a virtualenv of its own.
#
#     bash bench/setup_litellm.sh            # creates bench/.venv-litellm (about 750 MB, 1 minute)
#     PYTHON=python3.11 bash bench/setup_litellm.sh
#
# Installs exactly bench/litellm-requirements.txt (litellm[proxy] and every dependency, pinned)
# into bench/.venv-litellm, never into the project's .venv. Safe to run again: it reuses the
# virtualenv and reinstalls only what differs from the pins. Then it checks that the proxy
# imports and that no package of the virtualenv installed a start-up hook (a .pth file that runs
# code at every interpreter start, as the compromised LiteLLM 1.82.8 did), and prints the
# installed version. bench/run.py runs the proxy with telemetry, remote fetches, the admin UI
# and every database feature switched off (bench/services.py, `litellm_env`).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/.venv-litellm"
python="${PYTHON:-python3}"

if [[ ! -x "$venv/bin/python" ]]; then
    "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    -r "$here/litellm-requirements.txt"

site="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
# setuptools' distutils shim is the only start-up hook a clean virtualenv has.
unexpected="$(find "$site" -maxdepth 1 -name '*.pth' ! -name 'distutils-precedence.pth')"
if [[ -n "$unexpected" ]]; then
    echo "setup_litellm: unexpected start-up hooks in $site:" >&2
    echo "$unexpected" >&2
    exit 1
fi

# Importing the proxy's app module is what `litellm --config` does first; the variables keep
# this check from fetching anything.
LITELLM_LOCAL_MODEL_COST_MAP=True LITELLM_TELEMETRY_DISABLED=True \
    "$venv/bin/python" -c 'import litellm.proxy.proxy_cli' >/dev/null
version="$("$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("litellm"))')"
echo "LiteLLM $version installed in $venv"
