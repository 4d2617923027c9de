#!/usr/bin/env bash
# The HTTP guard's cost: throughput of a local 3-node cluster with --http-guard on (clients -> guard ->
# Unix socket -> tiny_http) and off (clients -> tiny_http), at the leader, with wrk at 64 connections:
#   stale reads:  GET /get?key=K&consistency=stale over KEYS preloaded keys (benches/get.lua get-stale)
#   writes:       GET /set with unique keys (benches/set.lua)
# Each repeat runs both modes on fresh clusters, alternating which goes first; the load average is printed
# before every run (the machine may be shared). Stops everything it started.
#
# Usage: scripts/bench-guard.sh [seconds] [repeats]     (defaults: 10 2)
# Env:   KEYS=1000  BIN=path/to/nimbus (default: target/release/nimbus after cargo build --release)
#
# tiny_http 0.12's pool can leave connections of a burst queued behind long-lived ones (see
# docs/benchmarks.md); both modes are exposed to it, so compare the runs, not the absolute numbers.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
repeats=${2:-2}
keys=${KEYS:-1000}
command -v wrk >/dev/null || { echo "wrk is missing (apt-get install wrk)" >&2; exit 1; }
if [ -z "${BIN:-}" ]; then
  cargo build --release --quiet
  BIN="${CARGO_TARGET_DIR:-target}/release/nimbus"
fi
dir=$(mktemp -d)
pids=()
stop_cluster() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  pids=()
}
cleanup() { stop_cluster; rm -rf "$dir"; }
trap cleanup EXIT
cluster="1,127.0.0.1:13131;2,127.0.0.1:13132;3,127.0.0.1:13133"
run=0
leader=""
start_cluster() { # $1: on|off
  stop_cluster
  run=$((run + 1))
  for n in 0 1 2; do
    RUST_LOG=warn "$BIN" --node $n --http 127.0.0.1:1212$((n + 1)) --cluster "$cluster" \
      --http-guard "$1" --data-dir "$dir/r$run-d$n" 2>"$dir/r$run-n$n.log" &
    pids+=($!)
  done
  leader=""
  for _ in $(seq 1 200); do
    for n in 1 2 3; do
      if curl -fsS "http://127.0.0.1:1212$n/status" 2>/dev/null | grep -q '"role":"leader"'; then leader=$n; fi
    done
    [ -n "$leader" ] && break
    sleep 0.1
  done
  [ -n "$leader" ] || { echo "no leader" >&2; exit 1; }
  for k in $(seq 0 $((keys - 1))); do
    key=$(printf 'k%05d' "$k")
    curl -fsS -o /dev/null "http://127.0.0.1:1212$leader/set?key=$key&value=value-of-$key"
  done
}
load() { cut -d' ' -f1-3 /proc/loadavg; }
echo "machine: $(nproc) cores, $(uname -sr); ${secs}s per run, 64 connections, 2 wrk threads, $keys keys"
printf '%-6s %-4s %-11s %12s %10s %10s %s\n' repeat mode workload "requests/s" "p50 ms" "p99 ms" "load (1/5/15 min) before"
for r in $(seq 1 "$repeats"); do
  modes="on off"; [ $((r % 2)) -eq 0 ] && modes="off on"
  for mode in $modes; do
    start_cluster "$mode"
    url="http://127.0.0.1:1212$leader"
    l=$(load)
    out=$(wrk -t2 -c64 -d"${secs}"s --latency -s benches/get.lua "$url" -- get-stale "$keys")
    res=$(grep RESULT <<<"$out")
    rps=$(sed -E 's/.*rps=([0-9]+).*/\1/' <<<"$res")
    p50=$(sed -E 's/.*p50_ms=([0-9.]+).*/\1/' <<<"$res")
    p99=$(sed -E 's/.*p99_ms=([0-9.]+).*/\1/' <<<"$res")
    bad=$(sed -E 's/.*non2xx=([0-9]+) connect=([0-9]+) read=([0-9]+) write=([0-9]+) timeout=([0-9]+).*/\1+\2+\3+\4+\5/' <<<"$res")
    printf '%-6s %-4s %-11s %12s %10s %10s %s  (errors %s)\n' "$r" "$mode" stale-get "$rps" "$p50" "$p99" "$l" "$bad"
    l=$(load)
    out=$(wrk -t2 -c64 -d"${secs}"s --latency -s benches/set.lua "$url")
    rps=$(grep Requests/sec <<<"$out" | awk '{print int($2)}')
    p50=$(grep 'p50 latency' <<<"$out" | awk '{print $3}')
    p99=$(grep 'p99 latency' <<<"$out" | awk '{print $3}')
    bad=$(grep 'non-2xx or errors' <<<"$out" | awk '{print $4}')
    printf '%-6s %-4s %-11s %12s %10s %10s %s  (errors %s)\n' "$r" "$mode" set "$rps" "$p50" "$p99" "$l" "$bad"
  done
done
