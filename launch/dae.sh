#!/usr/bin/env bash
# Phase dae alone, on one node or many: launch/variant.sh --phase dae, with the same options (--help).
set -euo pipefail
exec "$(dirname "${BASH_SOURCE[0]}")/variant.sh" --phase dae "$@"
