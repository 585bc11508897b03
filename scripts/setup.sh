#!/usr/bin/env bash
# Create ./.venv and install bcos_zoo into it with the tested, pinned versions (constraints.txt).
# Usage: bash scripts/setup.sh [extras]   (extras: timm, demo, train, spaces, dev; default: demo)
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-demo}"
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -c constraints.txt -e ".[${extras}]"
