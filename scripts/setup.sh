#!/usr/bin/env bash
# Install everything fairbench needs into a virtual environment (default .venv), from nothing:
# Debian's Fashion-MNIST and Chromium (for the HTML report test) when missing, torch, the project.
set -euo pipefail
VENV="${1:-.venv}"
cd "$(dirname "$0")/.."

need_apt=()
[ -d /usr/share/datasets/fashion-mnist ] || need_apt+=(dataset-fashion-mnist)
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
if [ ${#need_apt[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "installing Debian packages: ${need_apt[*]}"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
    else
        echo "note: not root; install ${need_apt[*]} yourself (apt-get install ${need_apt[*]})" >&2
    fi
fi

[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
# torch first and pinned: the build this project is tested with
"$VENV/bin/python" -m pip install -q torch==2.14.1 torchvision==0.29.1
"$VENV/bin/python" -m pip install -q -e '.[test]'
