#!/usr/bin/env bash
# Phase cl alone, on one node or many: launch/variant.sh --phase cl, with the same options (--help).
set -euo pipefail
exec "$(dirname "${BASH_SOURCE[0]}")/variant.sh" --phase cl "$@"
