#!/usr/bin/env bash
# Create .venv (if missing) and install edgekit with the host-side converter stack and test tools.
# torch is pinned in constraints.txt to the CPU build; an unpinned torch pulls a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -c constraints.txt -e ".[dev]"
