#!/usr/bin/env bash
# Main job: train a small model dense and sparse (several methods at 90 %) and print a table.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh"
exec sparseforge demo "$@"
