#!/usr/bin/env bash
# Create or refresh the project virtualenv (.venv) and the offline data the demo uses.
# Sourced by scripts/demo.sh and scripts/test.sh; safe to run again (it only redoes what changed).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
py="${PYTHON:-python3}"

# Debian data where the machine allows it (root + apt): Fashion-MNIST (MNIST-1D is the fallback)
# and the King James Bible (a second offline calibration text for one-shot pruning).
missing=""
[ -d /usr/share/datasets/fashion-mnist ] || missing="$missing dataset-fashion-mnist"
command -v bible >/dev/null 2>&1 || missing="$missing bible-kjv"
if [ -n "$missing" ] && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "[bootstrap] installing Debian package(s)$missing" >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing) \
        >/dev/null 2>&1 || echo "[bootstrap] could not install$missing; Fashion-MNIST falls back to MNIST-1D" >&2
fi

stamp="$venv/.sparseforge-stamp"
want="$(cat "$root/pyproject.toml" "$root/scripts/bootstrap.sh" | sha256sum | cut -d' ' -f1)"
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "[bootstrap] setting up $venv" >&2
    [ -x "$venv/bin/python" ] || "$py" -m venv "$venv"
    # torch is pinned in the same call as the project so pip never resolves a CUDA build.
    "$venv/bin/pip" install -q --disable-pip-version-check "torch==2.13.0" -e "$root[dev]" 2>&1 \
        | grep -v "is ignored: it is neither a file nor a directory" >&2 || true
    "$venv/bin/python" -c "import torch, sparseforge" >/dev/null
    echo "$want" > "$stamp"
fi
# Jane Austen's novels (Debian r-cran-janeaustenr, unpacked into ~/.cache without root) for the
# language-model benchmarks; everything else works without them.
"$venv/bin/python" -m sparseforge data fetch austen \
    >/dev/null 2>&1 || echo "[bootstrap] Jane Austen corpus not available; the nm_lm benchmark needs it" >&2
export PATH="$venv/bin:$PATH"
