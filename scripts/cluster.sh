#!/usr/bin/env bash
# Starts a local 3-node Hash Nimbus cluster (HTTP on 2021-2023, Raft on 3031-3033) and stops it on Ctrl-C.
# Usage: scripts/cluster.sh [data-root] [more `nimbus dev` flags, e.g. --nodes 5 --restart]
#        (default data root: ./cluster-data)
# This is `nimbus dev` with the classic ports and a data root that persists across runs (node-<n>/ for
# data, node-<n>.log for logs); delete the data root to start fresh. `nimbus dev --help` lists the flags.
set -euo pipefail
cd "$(dirname "$0")/.."
root=${1:-cluster-data}
shift || true
# cargo run execs the binary, so Ctrl-C reaches `nimbus dev`, which stops every node and exits.
exec cargo run --release --quiet -- dev --base-port 2021 --data-dir "$root" "$@"
