#!/usr/bin/env bash
# Write throughput of a local 3-node cluster with wrk (installs wrk if missing): sequential (1 connection)
# and concurrent (64 connections) /set with unique keys, against the leader and a follower, each on a fresh
# cluster, with the leader's group-commit counters. Stops everything it started.
# Usage: scripts/bench-writes.sh [seconds]     (default 10)
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
cargo build --release --quiet
dir=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT
cluster="1,127.0.0.1:13031;2,127.0.0.1:13032;3,127.0.0.1:13033"
run=0
start_cluster() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  pids=()
  run=$((run + 1))
  for n in 0 1 2; do
    RUST_LOG=warn target/release/nimbus --node $n --http 127.0.0.1:1202$((n + 1)) --cluster "$cluster" \
      --data-dir "$dir/r$run-d$n" 2>"$dir/r$run-n$n.log" &
    pids+=($!)
  done
  leader=""
  for _ in $(seq 1 100); do
    for n in 1 2 3; do
      if curl -fsS "http://127.0.0.1:1202$n/status" 2>/dev/null | grep -q '"role":"leader"'; then leader=$n; fi
    done
    [ -n "$leader" ] && break
    sleep 0.1
  done
  [ -n "$leader" ] || { echo "no leader" >&2; exit 1; }
  follower=$(( leader % 3 + 1 ))
}
echo "machine: $(nproc) cores, $(uname -sr); ${secs}s per run, a fresh cluster per run"
for who in leader follower; do
  for c in 1 64; do
    start_cluster
    port=$leader; [ "$who" = follower ] && port=$follower
    t=$(( c < 2 ? 1 : 2 ))
    echo "== $who, $c connection(s)"
    wrk -t$t -c$c -d${secs}s --latency -s benches/set.lua "http://127.0.0.1:1202$port" \
      | grep -E "Requests/sec|p[0-9.]+ latency|non-2xx"
    curl -fsS "http://127.0.0.1:1202$leader/status" | python3 -c '
import json,sys; s=json.load(sys.stdin)["stats"]
print("leader: fsyncs", s["fsyncs"], "entries", s["entries_persisted"], "avg entries/fsync %.1f" % s["avg_entries_per_fsync"], "max", s["max_entries_per_fsync"])'
  done
done
