#!/usr/bin/env bash
# Create ./.venv and install bcos_zoo into it with the tested, pinned versions (constraints.txt).
# Usage: bash scripts/setup.sh [extras]   (extras: timm, train, eval, demo, spaces, dev; default: demo)
# Also installs the Debian packages the chosen extras use, when run as root with apt-get:
# dataset-fashion-mnist (the offline recipe's data) and, for dev/spaces, chromium (the Space browser tests).
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-demo}"

debs=()
[ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] || debs+=(dataset-fashion-mnist)
if [[ "$extras" == *dev* || "$extras" == *spaces* ]] && ! command -v chromium > /dev/null; then debs+=(chromium); fi
if [ ${#debs[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get > /dev/null; then
    echo "Installing Debian packages: ${debs[*]}"
    apt-get install -y -qq --no-install-recommends "${debs[@]}" > /dev/null \
      || { apt-get update -qq > /dev/null && apt-get install -y -qq --no-install-recommends "${debs[@]}" > /dev/null; } \
      || echo "Warning: apt-get could not install ${debs[*]} (offline?); the tests that need them will fail." >&2
  else
    echo "Note: not root or no apt-get; install ${debs[*]} yourself (see README)." >&2
  fi
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -c constraints.txt -e ".[${extras}]"
