#!/usr/bin/env bash
# Former name of scripts/nested/e2e.sh, kept so existing callers work: the same test, with QEMU's
# microvm as the L2 VMM unless L2_VMM says otherwise.
set -euo pipefail
L2_VMM=${L2_VMM:-qemu} exec "$(dirname "${BASH_SOURCE[0]}")/e2e.sh" "$@"
