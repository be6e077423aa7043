#!/usr/bin/env bash
# Phase ft alone, on one node or many: launch/variant.sh --phase ft, with the same options (--help).
set -euo pipefail
exec "$(dirname "${BASH_SOURCE[0]}")/variant.sh" --phase ft "$@"
