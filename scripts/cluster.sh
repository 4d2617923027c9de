#!/usr/bin/env bash
# Starts a local 3-node Hash Nimbus cluster (HTTP on 2021-2023, Raft on 3031-3033) and stops it on Ctrl-C.
# Usage: scripts/cluster.sh [data-root]      (default data root: ./cluster-data)
# Logs go to <data-root>/node-<n>.log. Data persists across runs; delete the data root to start fresh.
set -euo pipefail
cd "$(dirname "$0")/.."
root=${1:-cluster-data}
mkdir -p "$root"
cargo build --release --quiet
bin=target/release/nimbus
cluster="1,:3031;2,:3032;3,:3033"
pids=()
stop() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  echo "cluster stopped"
}
trap stop EXIT INT TERM
for n in 0 1 2; do
  "$bin" --node "$n" --http ":202$((n + 1))" --cluster "$cluster" --data-dir "$root/node-$((n + 1))" \
    >"$root/node-$((n + 1)).log" 2>&1 &
  pids+=($!)
done
# Wait (bounded) until some node reports a leader.
for _ in $(seq 1 100); do
  if curl -fsS "http://localhost:2021/status" 2>/dev/null | grep -q '"leader":[0-9]'; then
    echo "cluster up: try  curl \"http://localhost:2021/set?key=test&value=success\""
    echo "                 curl \"http://localhost:2022/get?key=test\""
    echo "logs in $root/node-*.log; Ctrl-C stops the cluster"
    wait
    exit 0
  fi
  sleep 0.1
done
echo "no leader after 10 s; see $root/node-*.log" >&2
exit 1
