#!/usr/bin/env bash
# Phase joint alone, on one node or many: launch/variant.sh --phase joint, with the same options (--help).
set -euo pipefail
exec "$(dirname "${BASH_SOURCE[0]}")/variant.sh" --phase joint "$@"
