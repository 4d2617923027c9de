#!/usr/bin/env bash
# Hash Nimbus next to etcd 3.4 (v2 API), with the same load generator (`nimbus bench`) against each leader.
#
# One system at a time (never both running, so they do not compete for the machine): a fresh 3-node cluster
# on loopback (fsync on for both: the default of each), its leader found (nimbus: /status "role":"leader";
# etcd: /v2/stats/self "StateLeader"), then, against the leader:
#   - writes to fresh keys at each concurrency of CONCURRENCY (default 1 8 16 32 64 128)
#     (nimbus: GET /set?key=&value=; etcd: PUT /v2/keys/K with form body value=...)
#   - linearizable reads, 64 connections, 1,000 preloaded keys (nimbus: /get?consistency=linearizable;
#     etcd: GET /v2/keys/K?quorum=true)
#   - stale reads, 64 connections, the same keys (nimbus: /get?consistency=stale; etcd: plain GET, a local
#     read)
#   - a cross-check of the load generator: wrk (2 threads) writing fresh keys at 64 connections, for the
#     same time (WRK_CHECK=0 skips it)
# then each node's RSS (VmRSS) is recorded and the cluster stopped. 100-byte values everywhere.
#
# Usage: scripts/bench-vs-etcd.sh [results-dir]          (default: target/bench-vs-etcd)
# Env:   SECS=5 WARMUP=1       measured and warmup seconds per run (about 4 minutes in all with the defaults)
#        CONCURRENCY="1 8 16 32 64 128"   READ_CONNS=64   SYSTEMS="nimbus etcd"   WRK_CHECK=1
#        NIMBUS_FLAGS="..." ETCD_FLAGS="..."  extra flags for every node (split on spaces), e.g.
#                           NIMBUS_FLAGS="--snapshot-entries 10000000" to take no snapshot during the runs
#
# Writes to the results dir: context.txt (date, machine, load average, versions), results.csv and
# results.jsonl (one row / one `nimbus bench --json` object per run, with the load average before it),
# rss.csv, nimbus-leader.csv (the nimbus leader's term, key count and snapshot counters after each run),
# table.md (the side-by-side table, also printed) and bench-writes.svg (scripts/chart.py).
# Installs etcd-server and wrk with apt-get if missing. Stops everything it started, whatever happens.
# Exit status 1 if any run failed or counted errors.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

secs=${SECS:-5}
warmup=${WARMUP:-1}
concurrency=${CONCURRENCY:-1 8 16 32 64 128}
read_conns=${READ_CONNS:-64}
systems=${SYSTEMS:-nimbus etcd}
wrk_check=${WRK_CHECK:-1}
read -r -a nimbus_flags <<<"${NIMBUS_FLAGS:-}"
read -r -a etcd_flags <<<"${ETCD_FLAGS:-}"
results=${1:-target/bench-vs-etcd}
[[ "$secs" =~ ^[0-9]+$ && "$secs" -ge 1 && "$secs" -le 600 ]] || { echo "SECS must be 1..600" >&2; exit 2; }
[[ "$warmup" =~ ^[0-9]+$ && "$warmup" -le 60 ]] || { echo "WARMUP must be 0..60" >&2; exit 2; }
for c in $concurrency $read_conns; do
  [[ "$c" =~ ^[0-9]+$ && "$c" -ge 1 && "$c" -le 1024 ]] || { echo "concurrency $c must be 1..1024" >&2; exit 2; }
done

# --- what is needed ---------------------------------------------------------------------------------------
pkgs=()
command -v etcd >/dev/null || pkgs+=(etcd-server)
if [ "$wrk_check" = 1 ]; then command -v wrk >/dev/null || pkgs+=(wrk); fi
command -v curl >/dev/null || pkgs+=(curl)
if [ ${#pkgs[@]} -gt 0 ]; then
  echo "installing ${pkgs[*]}..."
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${pkgs[@]}" >/dev/null
fi
command -v python3 >/dev/null || { echo "python3 is needed (table, chart)" >&2; exit 1; }
command -v ss >/dev/null || { echo "ss (iproute2) is needed to check ports" >&2; exit 1; }
etcd --version 2>/dev/null | grep -q 'etcd Version: 3\.4\.' ||
  echo "warning: written for etcd 3.4; found: $(etcd --version 2>/dev/null | head -1)" >&2

# Loopback ports: nimbus HTTP 16021-16023, Raft 16031-16033; etcd clients 16179/16279/16379, peers 16x80.
nports=(16021 16022 16023)
eports=(16179 16279 16379)
for p in "${nports[@]}" 16031 16032 16033 "${eports[@]}" 16180 16280 16380; do
  if [ -n "$(ss -ltnH "( sport = :$p )")" ]; then echo "port $p is in use; stop whatever listens there" >&2; exit 1; fi
done

echo "building (release)..."
cargo build --release --quiet
bin="${CARGO_TARGET_DIR:-$root/target}/release/nimbus"
[ -x "$bin" ] || { echo "no binary at $bin" >&2; exit 1; }

mkdir -p "$results"
results=$(cd "$results" && pwd)
dir=$(mktemp -d /tmp/bench-vs-etcd.XXXXXX)
pids=()
node_pid=()
failed=0

alive() { [ -e "/proc/$1" ] && ! grep -q ') Z' "/proc/$1/stat" 2>/dev/null; }
# Stops every server this script started: SIGTERM, at most 10 s of grace, then SIGKILL.
stop_all() {
  local p any
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for _ in $(seq 1 100); do
    any=0
    for p in "${pids[@]}"; do if alive "$p"; then any=1; fi; done
    [ $any = 0 ] && break
    sleep 0.1
  done
  for p in "${pids[@]}"; do if alive "$p"; then kill -9 "$p" 2>/dev/null || true; fi; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  pids=()
}
cleanup() { stop_all; rm -rf "$dir"; }
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- context -----------------------------------------------------------------------------------------------
{
  echo "date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
  echo "nproc: $(nproc)"
  echo "cpu: $(lscpu | sed -n 's/^Model name: *//p' | head -1)"
  echo "memory: $(awk '/MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)"
  echo "kernel: $(uname -sr)"
  echo "disk (data dirs): $(df -hT "$dir" | awk 'NR == 2 {print $2, "on", $1, "(" $3 ")"}')"
  echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "nimbus: $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD 2>/dev/null || echo '+uncommitted')"
  echo "etcd: $(etcd --version 2>/dev/null | head -1 | sed 's/etcd Version: //')"
  echo "runs: ${secs} s measured after ${warmup} s warmup; writes at: $concurrency; reads at $read_conns connections"
  echo "extra flags: nimbus: ${NIMBUS_FLAGS:-none}; etcd: ${ETCD_FLAGS:-none}"
} | tee "$results/context.txt"

csv="$results/results.csv"
jsonl="$results/results.jsonl"
echo "system,label,tool,workload,consistency,connections,ops_per_sec,p50_ms,p90_ms,p99_ms,p999_ms,max_ms,errors,client_cpu_pct,load1_before" >"$csv"
: >"$jsonl"
echo "system,node,role,vmrss_kib" >"$results/rss.csv"
echo "label,term,role,keys,snapshots_taken,last_snapshot_pause_us" >"$results/nimbus-leader.csv"

# --- clusters ---------------------------------------------------------------------------------------------
leader=""
start_nimbus() {
  node_pid=()
  local n c="1,127.0.0.1:16031;2,127.0.0.1:16032;3,127.0.0.1:16033"
  for n in 0 1 2; do
    RUST_LOG=warn "$bin" --node $n --http "127.0.0.1:${nports[n]}" --cluster "$c" \
      --data-dir "$dir/nimbus-$n" ${nimbus_flags[@]+"${nimbus_flags[@]}"} 2>"$dir/nimbus-$n.log" &
    pids+=($!)
    node_pid[n]=$!
  done
  find_leader nimbus /status '"role":"leader"' "${nports[@]}"
  port=${nports[leader]}
}

# find_leader SYSTEM PATH PATTERN PORT...: sets `leader` to the index of the port whose `GET PATH` answer
# matches PATTERN, polling every 0.1 s for about 15 s; exits 1 naming the logs if none does.
find_leader() {
  local system=$1 path=$2 pattern=$3 i
  shift 3
  local ports=("$@")
  leader=""
  for _ in $(seq 1 150); do
    for i in "${!ports[@]}"; do
      if curl -fsS --max-time 1 "http://127.0.0.1:${ports[i]}$path" 2>/dev/null | grep -q "$pattern"; then
        leader=$i
      fi
    done
    [ -n "$leader" ] && break
    sleep 0.1
  done
  [ -n "$leader" ] || { echo "$system: no leader after about 15 s; see $dir/$system-*.log" >&2; exit 1; }
}

start_etcd() {
  node_pid=()
  local n ic="e0=http://127.0.0.1:16180,e1=http://127.0.0.1:16280,e2=http://127.0.0.1:16380"
  for n in 0 1 2; do
    local cu="http://127.0.0.1:${eports[n]}" pu="http://127.0.0.1:16$((n + 1))80"
    etcd --name "e$n" --data-dir "$dir/etcd-$n" --listen-client-urls "$cu" --advertise-client-urls "$cu" \
      --listen-peer-urls "$pu" --initial-advertise-peer-urls "$pu" --initial-cluster "$ic" \
      --initial-cluster-state new --initial-cluster-token bench-vs-etcd --enable-v2=true \
      --logger zap --log-outputs stderr ${etcd_flags[@]+"${etcd_flags[@]}"} 2>"$dir/etcd-$n.log" &
    pids+=($!)
    node_pid[n]=$!
  done
  find_leader etcd /v2/stats/self '"state":"StateLeader"' "${eports[@]}"
  port=${eports[leader]}
}

# --- one `nimbus bench` run ---------------------------------------------------------------------------------
# one SYSTEM LABEL BENCH-ARGS...: appends the JSON to results.jsonl and a row to results.csv.
one() {
  local system=$1 label=$2 api=nimbus load out
  shift 2
  [ "$system" = etcd ] && api=etcd-v2
  load=$(cut -d' ' -f1 /proc/loadavg)
  if ! out=$(timeout $((secs + warmup + 400)) "$bin" bench --api "$api" --target "127.0.0.1:$port" \
      --duration "$secs" --warmup "$warmup" --json -q "$@" 2>"$dir/bench.err"); then
    echo "FAIL: $system $label: $(tail -3 "$dir/bench.err")" >&2
    failed=1
    return 0
  fi
  python3 - "$system" "$label" "$load" "$out" "$csv" "$jsonl" <<'PY' || failed=1
import json, sys
system, label, load, out, csv, jsonl = sys.argv[1:]
s = json.loads(out)
s.update(system=system, label=label, tool="nimbus bench", load1_before=float(load))
with open(jsonl, "a") as f:
    f.write(json.dumps(s, sort_keys=True) + "\n")
l = s["latency"]
row = [system, label, "nimbus bench", s["workload"], s["consistency"] or "", s["connections"], s["ops_per_sec"],
       l["p50_ms"], l["p90_ms"], l["p99_ms"], l["p999_ms"], l["max_ms"], s["errors"], s["client_cpu_pct"], load]
with open(csv, "a") as f:
    f.write(",".join(str(x) for x in row) + "\n")
errs = " ".join("%s: %d" % kv for kv in s["errors_by_kind"].items())
print("  %-6s %-22s %10.1f ops/s  p50 %7.3f  p99 %7.3f  p99.9 %8.3f ms  errors %d %s  (bench CPU %s%% of a core, load %s)"
      % (system, label, s["ops_per_sec"], l["p50_ms"], l["p99_ms"], l["p999_ms"], s["errors"], errs,
         s["client_cpu_pct"], load))
sys.exit(1 if s["errors"] else 0)
PY
  if [ "$system" = nimbus ]; then
    # The leader's term and snapshot counters after each run: a term change means an election mid-run, and
    # snapshots pause the Raft thread while the state is cloned (docs/benchmarks.md, "Snapshots").
    curl -fsS --max-time 2 "http://127.0.0.1:$port/status" 2>/dev/null | python3 -c '
import json, sys
s = json.load(sys.stdin); sn = s["stats"]["snapshots"]
print("%s,%s,%s,%s,%s,%s" % (sys.argv[1], s["term"], s["role"], s.get("keys", ""), sn["taken"], sn["last_pause_us"]))' \
      "$label" >>"$results/nimbus-leader.csv" || echo "$label,,,,," >>"$results/nimbus-leader.csv"
  fi
}

# wrk cross-check: fresh keys at 64 connections, 2 threads, SECS seconds.
cat >"$dir/write.lua" <<'EOF'
-- wrk: writes to fresh keys, nimbus seed route or etcd v2 (args: nimbus|etcd); 100-byte values.
local counter, prefix, api = 0, nil, "nimbus"
local value = string.rep("abcdefghijklmnopqrstuvwxyz", 4):sub(1, 100)
init = function(args) api = args[1] or "nimbus" end
request = function()
  if prefix == nil then
    math.randomseed(os.time() + math.floor(os.clock() * 1e6))
    prefix = "wrk" .. tostring(math.random(1, 1000000000))
  end
  counter = counter + 1
  local key = prefix .. "-" .. counter
  if api == "etcd" then
    return wrk.format("PUT", "/v2/keys/" .. key,
      { ["Content-Type"] = "application/x-www-form-urlencoded" }, "value=" .. value)
  end
  return wrk.format("GET", "/set?key=" .. key .. "&value=" .. value)
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT rps=%.1f p50=%.3f p90=%.3f p99=%.3f p999=%.3f max=%.3f errors=%d\n",
    summary.requests / (summary.duration / 1e6), latency:percentile(50) / 1000, latency:percentile(90) / 1000,
    latency:percentile(99) / 1000, latency:percentile(99.9) / 1000, latency.max / 1000,
    e.status + e.connect + e.read + e.write + e.timeout))
end
EOF
wrk_one() {
  local system=$1 load res
  load=$(cut -d' ' -f1 /proc/loadavg)
  res=$(timeout $((secs + 30)) wrk -t2 -c64 -d"${secs}s" -s "$dir/write.lua" "http://127.0.0.1:$port" -- "$system" \
    2>&1 | grep '^RESULT' || true)
  if [ -z "$res" ]; then echo "FAIL: wrk gave no result for $system" >&2; failed=1; return 0; fi
  eval "$(echo "${res#RESULT }" | tr ' ' '\n' | sed 's/^/w_/')"
  echo "$system,wrk-write-c64,wrk,write,,64,$w_rps,$w_p50,$w_p90,$w_p99,$w_p999,$w_max,$w_errors,,$load" >>"$csv"
  printf '  %-6s %-22s %10.1f req/s  p50 %7.3f  p99 %7.3f  p99.9 %8.3f ms  errors %d  (wrk, load %s)\n' \
    "$system" wrk-write-c64 "$w_rps" "$w_p50" "$w_p99" "$w_p999" "$w_errors" "$load"
  [ "$w_errors" = 0 ] || failed=1
}

run_system() {
  local system=$1 c n role rss
  "start_$system"
  echo "$system: leader is node $((leader + 1)) (port $port)"
  for c in $concurrency; do
    one "$system" "write-c$c" --workload write --unique-keys -c "$c"
  done
  one "$system" "read-linearizable-c$read_conns" --workload read --consistency linearizable -c "$read_conns" --keys 1000
  one "$system" "read-stale-c$read_conns" --workload read --consistency stale -c "$read_conns" --keys 1000 --no-preload
  [ "$wrk_check" = 1 ] && wrk_one "$system"
  for n in 0 1 2; do
    role=follower
    [ "$n" = "$leader" ] && role=leader
    rss=$(awk '/^VmRSS:/ {print $2}' "/proc/${node_pid[n]}/status" 2>/dev/null || echo "")
    echo "$system,$((n + 1)),$role,$rss" >>"$results/rss.csv"
  done
  echo "  RSS after the runs (KiB): $(grep "^$system," "$results/rss.csv" | cut -d, -f2-4 | tr '\n' ' ')"
  stop_all
}

for system in $systems; do
  case $system in nimbus | etcd) run_system "$system" ;; *) echo "unknown system $system" >&2; exit 2 ;; esac
done
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$results/context.txt"

# --- table and chart ------------------------------------------------------------------------------------------
python3 - "$csv" "$results/rss.csv" >"$results/table.md" <<'PY'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
rss = list(csv.DictReader(open(sys.argv[2])))
by = {(r["system"], r["label"]): r for r in rows}
labels = []
for r in rows:
    if r["label"] not in labels:
        labels.append(r["label"])
def name(label):
    if label.startswith("wrk-write-c"):
        return "writes, %s conns (wrk cross-check)" % label[len("wrk-write-c"):]
    if label.startswith("write-c"):
        n = label[len("write-c"):]
        return "writes, %s conn%s" % (n, "" if n == "1" else "s")
    kind, conns = label.rsplit("-c", 1)
    return "%s reads, %s conns" % (kind.split("-", 1)[1], conns)
def f(x, fmt="{:,.0f}"):
    return fmt.format(float(x)) if x not in (None, "") else "-"
print("| load | nimbus ops/s | etcd ops/s | nimbus/etcd | nimbus p99 ms | etcd p99 ms | errors (n/e) | load avg (n/e) |")
print("|---|---:|---:|---:|---:|---:|---|---|")
for label in labels:
    n, e = by.get(("nimbus", label)), by.get(("etcd", label))
    ratio = "-"
    if n and e and float(e["ops_per_sec"]) > 0:
        ratio = "%.2fx" % (float(n["ops_per_sec"]) / float(e["ops_per_sec"]))
    print("| %s | %s | %s | %s | %s | %s | %s/%s | %s/%s |" % (
        name(label), f(n and n["ops_per_sec"]), f(e and e["ops_per_sec"]), ratio,
        f(n and n["p99_ms"], "{:.2f}"), f(e and e["p99_ms"], "{:.2f}"),
        n["errors"] if n else "-", e["errors"] if e else "-",
        n["load1_before"] if n else "-", e["load1_before"] if e else "-"))
print()
print("RSS after the runs (MiB): " + "; ".join(
    "%s node %s (%s) %.0f" % (r["system"], r["node"], r["role"], int(r["vmrss_kib"] or 0) / 1024) for r in rss))
PY
echo
cat "$results/table.md"
python3 scripts/chart.py "$csv" "$results/bench-writes.svg" --title "Writes/s vs connections (3 nodes, loopback, fsync on; $(nproc) cores shared)"
echo
echo "results in $results (context.txt, results.csv, results.jsonl, rss.csv, nimbus-leader.csv, table.md, bench-writes.svg)"
[ $failed = 0 ] || { echo "some runs failed or counted errors (see above)" >&2; exit 1; }
