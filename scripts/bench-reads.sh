#!/usr/bin/env bash
# Linearizable-read throughput of a local 3-node Hash Nimbus cluster next to a local 3-node etcd 3.4 cluster,
# in the same run, on loopback, with wrk (benches/get.lua spreads the reads over the preloaded keys).
#
# Per repeat, for each system: a fresh 3-node cluster (fsync on, default settings), KEYS keys preloaded
# (100-byte values) and read back on every node, then wrk against the leader and against a follower:
#   nimbus: GET /get?key=K (linearizable) at 1 and 64 connections (and 16, 4 at the leader);
#           GET /v1/kv/K (linearizable) and GET /v1/kv/K?consistency=stale at 64 connections;
#           GET /get at 64 connections again after warming tiny_http's thread pool (see below)
#   etcd:   POST /v3/kv/range through the v3 HTTP/JSON gateway, linearizable (the default) at 1 and 64
#           connections (and 16, 4 at the leader); serializable=true at 64 connections
# wrk uses 2 threads (1 for a single connection). Every run records how many of wrk's connections the server
# actually read from, and how much CPU the servers, wrk and everything else on the machine used; before each
# run the script checks that other processes are quiet (and can wait for it). Prints a table at the end.
#
# Usage: scripts/bench-reads.sh [seconds] [repeats]      (defaults: 10 1; about 4-5 minutes)
# Env:   KEYS=1000  SYSTEMS="nimbus etcd"
#        QUIET_WAIT=0       seconds to wait, before each run, for other processes to go quiet (e.g. 120 on a
#                           shared machine)
#        RESULTS=file.tsv   raw per-run results (default: a new /tmp/bench-reads-*.tsv)
#
# Exit status 1 if any wrk run saw a non-2xx answer or a socket read/write/connect error, or if a value read
# back after the runs is wrong. Installs nothing: it says what is missing.
#
# Served connections: tiny_http gives each connection to one pool thread for the connection's life, and can
# leave connections queued when a burst arrives (docs/benchmarks.md). During each run the script samples the
# server side of wrk's connections once a second with `ss`; a connection whose Recv-Q (request bytes nobody
# has read) is non-zero in every sample is counted as never read. "served" = connections minus never read.
# For nimbus it also counts tiny_http's pool threads (unnamed threads, which show the process name). The
# "+warm" run first opens the same number of connections one at a time (each answered before the next), so
# the pool has that many idle threads when wrk's burst arrives: what the HTTP layer gives without the bug.
set -euo pipefail
cd "$(dirname "$0")/.."

secs=${1:-10}
repeats=${2:-1}
keys=${KEYS:-1000}
systems=${SYSTEMS:-nimbus etcd}
[[ "$secs" =~ ^[0-9]+$ && "$secs" -ge 2 && "$secs" -le 600 ]] || { echo "seconds must be 2..600" >&2; exit 2; }
[[ "$repeats" =~ ^[0-9]+$ && "$repeats" -ge 1 && "$repeats" -le 20 ]] || { echo "repeats must be 1..20" >&2; exit 2; }
[[ "$keys" =~ ^[0-9]+$ && "$keys" -ge 1 && "$keys" -le 99999 ]] || { echo "KEYS must be 1..99999" >&2; exit 2; }

# --- what is needed -------------------------------------------------------------------------------------
missing=()
need() { command -v "$1" >/dev/null || missing+=("$1 (package $2)"); }
need wrk wrk
need curl curl
need python3 python3
need ss iproute2
need cargo "a Rust toolchain"
case " $systems " in *" etcd "*) need etcd etcd-server; need etcdctl etcd-client ;; esac
if [ ${#missing[@]} -gt 0 ]; then
  echo "missing: ${missing[*]}" >&2
  echo "on Debian: apt-get install -y wrk curl python3 iproute2 etcd-server etcd-client" >&2
  exit 1
fi
if [[ " $systems " == *" etcd "* ]] && ! etcd --version 2>/dev/null | grep -q 'etcd Version: 3\.4\.'; then
  echo "warning: this script is written for etcd 3.4; found: $(etcd --version 2>/dev/null | head -1)" >&2
fi

# Loopback ports: nimbus HTTP 14021-14023, Raft 14031-14033; etcd clients 14179/14279/14379, peers 14x80.
nports=(14021 14022 14023)
eports=(14179 14279 14379)
for p in "${nports[@]}" 14031 14032 14033 "${eports[@]}" 14180 14280 14380; do
  if [ -n "$(ss -ltnH "( sport = :$p )")" ]; then echo "port $p is in use; stop whatever listens there" >&2; exit 1; fi
done

cargo build --release --quiet
bin="${CARGO_TARGET_DIR:-target}/release/nimbus"
[ -x "$bin" ] || { echo "no binary at $bin" >&2; exit 1; }

dir=$(mktemp -d /tmp/bench-reads.XXXXXX)
results=${RESULTS:-$(mktemp /tmp/bench-reads-XXXXXX.tsv)}
pids=()
failed=0

alive() { [ -e "/proc/$1" ] && ! grep -q ') Z' "/proc/$1/stat" 2>/dev/null; }

# Stops every server this script started: SIGTERM, at most 10 s of grace, then SIGKILL.
stop_all() {
  local p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for _ in $(seq 1 100); do
    local any=0
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

# --- helper: preload and verify (HTTP/1.1 keep-alive, one connection) ------------------------------------
cat >"$dir/kv.py" <<'EOF'
import base64, http.client, json, sys

action, system, addr, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
host, port = addr.rsplit(":", 1)
conn = http.client.HTTPConnection(host, int(port), timeout=10)

def key(k): return "k%05d" % k
def value(k): return ("v%05d-" % k) + "x" * 93          # 100 bytes
def b64(s): return base64.b64encode(s.encode()).decode()

def call(method, path, body=None, headers=None):
    conn.request(method, path, body=body, headers=headers or {})
    r = conn.getresponse()
    return r.status, r.read()

def etcd(path, obj):
    return call("POST", path, json.dumps(obj).encode(), {"Content-Type": "application/json"})

if action == "load":
    for k in range(n):
        if system == "nimbus":
            st, b = call("PUT", "/v1/kv/" + key(k), value(k).encode())
        else:
            st, b = etcd("/v3/kv/put", {"key": b64(key(k)), "value": b64(value(k))})
        if st != 200:
            sys.exit("put %s on %s: %d %r" % (key(k), addr, st, b[:200]))
elif action == "count":             # keys this node has applied (local, no Raft round)
    if system == "nimbus":
        st, b = call("GET", "/status")
        print(json.loads(b)["keys"] if st == 200 else -1)
    else:
        st, b = etcd("/v3/kv/range", {"key": b64("k"), "range_end": b64("l"), "count_only": True,
                                      "serializable": True})
        print(int(json.loads(b).get("count", 0)) if st == 200 else -1)
elif action == "verify":            # every key, linearizable, exact value
    bad = 0
    for k in range(n):
        if system == "nimbus":
            st, b = call("GET", "/v1/kv/" + key(k))
            got = b.decode(errors="replace") if st == 200 else None
        else:
            st, b = etcd("/v3/kv/range", {"key": b64(key(k))})
            kvs = json.loads(b).get("kvs", []) if st == 200 else []
            got = base64.b64decode(kvs[0]["value"]).decode(errors="replace") if kvs else None
        if got != value(k):
            bad += 1
            if bad <= 3:
                print("  wrong read of %s on %s: status %d, got %r" % (key(k), addr, st, got), file=sys.stderr)
    print(bad)
EOF
kvpy() { python3 "$dir/kv.py" "$@"; }

# Waits (bounded) until every node of $system has applied all keys; then reads them all back on every node.
check_data() {
  local system=$1 ok=0 a bad
  shift
  for _ in $(seq 1 100); do
    ok=1
    for a in "$@"; do [ "$(kvpy count "$system" "$a" "$keys" 2>/dev/null || echo -1)" = "$keys" ] || ok=0; done
    [ $ok = 1 ] && break
    sleep 0.1
  done
  [ $ok = 1 ] || { echo "FAIL: $system: not every node has $keys keys after 10 s" >&2; failed=1; return 0; }
  for a in "$@"; do
    bad=$(kvpy verify "$system" "$a" "$keys") || bad=-1
    if [ "$bad" != 0 ]; then echo "FAIL: $system at $a: $bad wrong reads of $keys" >&2; failed=1; fi
  done
}

# --- clusters -------------------------------------------------------------------------------------------
run=0
node_pid=()          # pid of node i (0-based), for the system running now
start_nimbus() {
  run=$((run + 1))
  node_pid=()
  local n c
  c="1,127.0.0.1:14031;2,127.0.0.1:14032;3,127.0.0.1:14033"
  for n in 0 1 2; do
    RUST_LOG=warn "$bin" --node $n --http "127.0.0.1:${nports[n]}" --cluster "$c" \
      --data-dir "$dir/nimbus-$run-$n" 2>"$dir/nimbus-$run-$n.log" &
    pids+=($!)
    node_pid[n]=$!
  done
  leader=""
  for _ in $(seq 1 100); do
    for n in 0 1 2; do
      if curl -fsS --max-time 1 "http://127.0.0.1:${nports[n]}/status" 2>/dev/null | grep -q '"role":"leader"'; then
        leader=$n
      fi
    done
    [ -n "$leader" ] && break
    sleep 0.1
  done
  [ -n "$leader" ] || { echo "nimbus: no leader after 10 s; logs in $dir" >&2; exit 1; }
  follower=$(((leader + 1) % 3))
}

etcd_endpoints="127.0.0.1:14179,127.0.0.1:14279,127.0.0.1:14379"
start_etcd() {
  run=$((run + 1))
  node_pid=()
  local n ic="e0=http://127.0.0.1:14180,e1=http://127.0.0.1:14280,e2=http://127.0.0.1:14380"
  for n in 0 1 2; do
    local cu="http://127.0.0.1:${eports[n]}" pu="http://127.0.0.1:14$((n + 1))80"
    etcd --name "e$n" --data-dir "$dir/etcd-$run-$n" --listen-client-urls "$cu" --advertise-client-urls "$cu" \
      --listen-peer-urls "$pu" --initial-advertise-peer-urls "$pu" --initial-cluster "$ic" \
      --initial-cluster-state new --initial-cluster-token "bench-reads-$run" \
      --logger zap --log-outputs stderr 2>"$dir/etcd-$run-$n.log" &
    pids+=($!)
    node_pid[n]=$!
  done
  leader=""
  for _ in $(seq 1 50); do
    leader=$(ETCDCTL_API=3 etcdctl --endpoints="$etcd_endpoints" --dial-timeout=1s --command-timeout=2s \
      endpoint status -w json 2>/dev/null | python3 -c '
import json, sys
ports = ["14179", "14279", "14379"]
try:
    for s in json.load(sys.stdin):
        if s["Status"]["header"]["member_id"] == s["Status"]["leader"]:
            print(ports.index(s["Endpoint"].rsplit(":", 1)[1]))
except Exception:
    pass') || true
    [ -n "$leader" ] && break
    sleep 0.2
  done
  [ -n "$leader" ] || { echo "etcd: no leader after about 10 s; logs in $dir" >&2; exit 1; }
  follower=$(((leader + 1) % 3))
}

# --- CPU accounting -------------------------------------------------------------------------------------
# /proc/stat: user nice system idle iowait irq softirq steal (USER_HZ ticks).
cpu_busy() { awk '/^cpu / {print $2 + $3 + $4, $9}' /proc/stat; }
# utime + stime of our server processes, in ticks.
servers_cpu() {
  local p t=0 f
  for p in "${node_pid[@]}"; do
    f=$(sed 's/^.*) //' "/proc/$p/stat" 2>/dev/null) || continue
    t=$((t + $(echo "$f" | awk '{print $12 + $13}')))
  done
  echo $t
}
# CPU of this shell's finished children (wrk, the sampler), in seconds. `times` must run in this shell, not
# in a $(...) subshell, whose children are its own.
children_cpu() {
  times >"$dir/times"
  sed -n 2p "$dir/times" | awk '{ s = 0; for (i = 1; i <= 2; i++) { split($i, a, /[ms]/); s += a[1] * 60 + a[2] } printf "%.2f", s }'
}
hz=$(getconf CLK_TCK)
ncpu=$(nproc)

# --- one wrk run ------------------------------------------------------------------------------------------
# Samples the server side of the target port every second (never past the run's end).
sampler() {
  local port=$1 pid=$2 n=$3 out=$4 i
  for i in $(seq 1 "$n"); do
    sleep 1
    ss -tnH state established "( sport = :$port )" | awk -v i="$i" '{print "S", i, $1, $4}' >>"$out"
    if [ "$pid" != 0 ]; then
      echo "T $i $(cat /proc/"$pid"/task/*/comm 2>/dev/null | grep -cx nimbus)" >>"$out"
    fi
  done
}

# Measures one second and, if processes other than ours used 10% or more of the machine's CPU in it, keeps
# measuring for at most QUIET_WAIT seconds (default 0) until they did not: other sessions on a shared
# machine would otherwise skew the run. Warns if the machine stays busy.
quiet_wait() {
  local deadline=$((SECONDS + ${QUIET_WAIT:-0})) b0 s0 b1 s1 other
  while :; do
    b0=$(cpu_busy); s0=$(servers_cpu)
    sleep 1
    b1=$(cpu_busy); s1=$(servers_cpu)
    other=$(awk -v b0="$b0" -v b1="$b1" -v s0="$s0" -v s1="$s1" -v n="$ncpu" -v hz="$hz" \
      'BEGIN { split(b0, x, " "); split(b1, y, " "); printf "%d", 100 * ((y[1] - x[1]) - (s1 - s0)) / (n * hz) }')
    [ "$other" -lt 10 ] && return 0
    if [ $SECONDS -ge "$deadline" ]; then
      echo "  warning: the machine is busy (${other}% CPU used by other processes); running anyway" >&2
      return 0
    fi
  done
}

# Opens `conns` connections to the port one after another, each answered before the next is opened, then
# closes them all: afterwards tiny_http has at least that many idle pool threads (for 5 s), so wrk's burst of
# connections is not queued. Shows what the HTTP layer would give if its pool did not starve bursts.
warm_pool() {
  python3 - "$1" "$2" <<'PY'
import http.client, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
conns = []
for _ in range(n):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    c.request("GET", "/health")
    c.getresponse().read()
    conns.append(c)
for c in conns:
    c.close()
PY
}

bench() {
  local system=$1 who=$2 mode=$3 conns=$4 rep=$5 warm=${6:-}
  local node=$leader
  [ "$who" = follower ] && node=$follower
  local port pid=0
  if [ "$system" = nimbus ]; then port=${nports[node]}; pid=${node_pid[node]}; else port=${eports[node]}; fi
  local threads=$((conns < 2 ? 1 : 2))
  local nsamp=$((secs - 2 < 8 ? secs - 2 : 8))
  [ $nsamp -ge 1 ] || nsamp=1
  local out="$dir/wrk.out" ssout="$dir/ss.out"
  : >"$ssout"
  local b0 s0 c0 b1 s1 c1
  quiet_wait
  [ -n "$warm" ] && warm_pool "$port" "$conns"
  # Connections already open (etcd's gateway keeps one to its own gRPC port) are not wrk's.
  ss -tnH state established "( sport = :$port )" | awk '{print "P", 0, 0, $4}' >"$ssout"
  children_cpu >"$dir/c0"; b0=$(cpu_busy); s0=$(servers_cpu); c0=$(cat "$dir/c0")
  sampler "$port" "$pid" "$nsamp" "$ssout" &
  local spid=$!
  wrk -t"$threads" -c"$conns" -d"${secs}s" --latency -s benches/get.lua "http://127.0.0.1:$port" -- "$mode" "$keys" \
    >"$out" 2>&1 || true
  wait "$spid" || true
  children_cpu >"$dir/c1"; b1=$(cpu_busy); s1=$(servers_cpu); c1=$(cat "$dir/c1")
  local res
  res=$(grep '^RESULT' "$out" || true)
  if [ -z "$res" ]; then
    echo "FAIL: wrk gave no result for $system $who $mode c$conns:" >&2
    cat "$out" >&2
    failed=1
    return 0
  fi
  eval "$(echo "$res" | sed 's/^RESULT //' | tr ' ' '\n' | sed 's/^/w_/')"
  # Connections: the most seen established; never read = non-zero Recv-Q in every sample.
  local est never pool
  est=$(awk '$1 == "P" {old[$4] = 1} $1 == "S" && !($4 in old) {n[$2]++}
    END {m = 0; for (i in n) if (n[i] > m) m = n[i]; print m}' "$ssout")
  never=$(awk -v n="$nsamp" '$1 == "P" {old[$4] = 1} $1 == "S" && $3 > 0 && !($4 in old) {c[$4]++}
    END {k = 0; for (p in c) if (c[p] >= n) k++; print k}' "$ssout")
  # tiny_http pool threads = unnamed threads minus the main thread and the accept thread.
  pool=$(awk '$1 == "T" {if ($3 - 2 > m) m = $3 - 2} END {print (m == "" ? "-" : m)}' "$ssout")
  [ "$system" = nimbus ] || pool="-"
  local cpu
  cpu=$(awk -v b0="$b0" -v b1="$b1" -v s0="$s0" -v s1="$s1" -v c0="$c0" -v c1="$c1" -v hz="$hz" -v n="$ncpu" -v d="$secs" '
    BEGIN {
      split(b0, x, " "); split(b1, y, " ");
      busy = (y[1] - x[1]) / hz; steal = (y[2] - x[2]) / hz;
      srv = (s1 - s0) / hz; cli = c1 - c0; other = busy - srv - cli; if (other < 0) other = 0;
      cap = n * d;
      printf "%.0f %.0f %.0f %.0f", 100 * srv / cap, 100 * cli / cap, 100 * other / cap, 100 * steal / cap
    }')
  local srv_pct cli_pct other_pct steal_pct
  read -r srv_pct cli_pct other_pct steal_pct <<<"$cpu"
  local errs=$((w_connect + w_read + w_write))
  local label=$mode
  [ -n "$warm" ] && label="$mode+warm"
  printf '%s\t%s\t%s\t%d\t%d\t%s\t%s\t%s\t%d\t%d\t%d\t%d\t%d\t%s\t%d\t%d\t%d\t%d\n' \
    "$system" "$who" "$label" "$conns" "$rep" "$w_rps" "$w_p50_ms" "$w_p99_ms" "$w_non2xx" "$errs" "$w_timeout" \
    "$est" "$never" "$pool" "$srv_pct" "$cli_pct" "$other_pct" "$steal_pct" >>"$results"
  printf '  %-6s %-8s %-16s c=%-3d %8s req/s  p50 %7s ms  p99 %8s ms  non-2xx %d  errors %d  timeouts %d  conns %d (never read %d, pool threads %s)  cpu: servers %d%% wrk %d%% other %d%% steal %d%%\n' \
    "$system" "$who" "$label" "$conns" "$w_rps" "$w_p50_ms" "$w_p99_ms" "$w_non2xx" "$errs" "$w_timeout" \
    "$est" "$never" "$pool" "$srv_pct" "$cli_pct" "$other_pct" "$steal_pct"
  if [ "$w_non2xx" != 0 ] || [ "$errs" != 0 ]; then
    echo "FAIL: $system $who $label c$conns: $w_non2xx non-2xx answers, $errs socket errors" >&2
    failed=1
  fi
  if [ "$other_pct" -gt 10 ] || [ "$steal_pct" -gt 5 ]; then
    echo "  warning: other processes used ${other_pct}% and the hypervisor stole ${steal_pct}% of the CPU during this run" >&2
  fi
}

# --- the runs ---------------------------------------------------------------------------------------------
bench_nimbus() {
  local rep=$1 a who
  start_nimbus
  kvpy load nimbus "127.0.0.1:${nports[leader]}" "$keys"
  check_data nimbus "127.0.0.1:${nports[0]}" "127.0.0.1:${nports[1]}" "127.0.0.1:${nports[2]}"
  echo "nimbus, repeat $rep: leader is node $((leader + 1)) (port ${nports[leader]}), follower node $((follower + 1))"
  for who in leader follower; do
    # The first run with many connections meets the node's tiny_http pool as a fresh node has it (4 idle
    # threads); later runs meet whatever the previous runs left. The warmed run comes last.
    bench nimbus "$who" get 1 "$rep"
    bench nimbus "$who" get 64 "$rep"
    if [ "$who" = leader ]; then
      bench nimbus "$who" get 16 "$rep"
      bench nimbus "$who" get 4 "$rep"
    fi
    bench nimbus "$who" kv 64 "$rep"
    bench nimbus "$who" kv-stale 64 "$rep"
    bench nimbus "$who" get 64 "$rep" warm
  done
  curl -fsS "http://127.0.0.1:${nports[leader]}/status" | python3 -c '
import json, sys; s = json.load(sys.stdin)["stats"]
print("  leader: reads_ok %d, Raft driver turns %d" % (s["reads_ok"], s["turns"]))'
  check_data nimbus "127.0.0.1:${nports[0]}" "127.0.0.1:${nports[1]}" "127.0.0.1:${nports[2]}"
  stop_all
}

bench_etcd() {
  local rep=$1 who
  start_etcd
  kvpy load etcd "127.0.0.1:${eports[leader]}" "$keys"
  check_data etcd "127.0.0.1:${eports[0]}" "127.0.0.1:${eports[1]}" "127.0.0.1:${eports[2]}"
  echo "etcd, repeat $rep: leader is e$leader (port ${eports[leader]}), follower e$follower"
  for who in leader follower; do
    bench etcd "$who" etcd 1 "$rep"
    bench etcd "$who" etcd 64 "$rep"
    if [ "$who" = leader ]; then
      bench etcd "$who" etcd 16 "$rep"
      bench etcd "$who" etcd 4 "$rep"
    fi
    bench etcd "$who" etcd-serial 64 "$rep"
  done
  check_data etcd "127.0.0.1:${eports[0]}" "127.0.0.1:${eports[1]}" "127.0.0.1:${eports[2]}"
  stop_all
}

echo "machine: $ncpu cores ($(lscpu | sed -n 's/^Model name: *//p')), $(uname -sr); wrk, the servers and this script share them"
echo "nimbus $(git rev-parse --short HEAD 2>/dev/null || echo '?'); $(etcd --version 2>/dev/null | head -1 || true); $(wrk -v 2>&1 | head -1 | cut -d' ' -f1-2)"
echo "${secs}s per run, $repeats repeat(s), $keys keys; raw results: $results"
printf 'system\ttarget\tmode\tconns\trepeat\trps\tp50_ms\tp99_ms\tnon2xx\terrors\ttimeouts\testablished\tnever_read\tpool_threads\tcpu_servers_pct\tcpu_wrk_pct\tcpu_other_pct\tcpu_steal_pct\n' >"$results"
for rep in $(seq 1 "$repeats"); do
  # Alternate the order so slow drift on the machine does not always favour the same system.
  order=$systems
  if [ $((rep % 2)) = 0 ]; then order=$(echo "$systems" | tr ' ' '\n' | tac | tr '\n' ' '); fi
  for s in $order; do
    case $s in
      nimbus) bench_nimbus "$rep" ;;
      etcd) bench_etcd "$rep" ;;
      *) echo "unknown system $s" >&2; exit 2 ;;
    esac
  done
done

# --- the table: median over repeats, min-max in brackets ----------------------------------------------
python3 - "$results" <<'EOF'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
names = {"get": "GET /get", "get+warm": "GET /get, pool warmed", "kv": "GET /v1/kv/K", "kv-stale": "GET /v1/kv/K stale", "etcd": "POST /v3/kv/range",
         "etcd-serial": "POST /v3/kv/range serializable"}
groups = {}
for r in rows:
    groups.setdefault((r["system"], r["target"], r["mode"], int(r["conns"])), []).append(r)
def span(vals, fmt):
    m = statistics.median(vals)
    return fmt % m if len(vals) == 1 else (fmt % m) + " [" + (fmt % min(vals)) + "-" + (fmt % max(vals)) + "]"
print()
print("| system | target | request | conns | req/s | p50 ms | p99 ms | served conns (min) | pool threads (min) | non-2xx / errors | other CPU % (max) |")
print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
for (system, target, mode, conns), rs in groups.items():
    rps = [float(r["rps"]) for r in rs]
    p50 = [float(r["p50_ms"]) for r in rs]
    p99 = [float(r["p99_ms"]) for r in rs]
    served = min(int(r["established"]) - int(r["never_read"]) for r in rs)
    bad = sum(int(r["non2xx"]) + int(r["errors"]) for r in rs)
    other = max(int(r["cpu_other_pct"]) for r in rs)
    pool = "-" if rs[0]["pool_threads"] == "-" else str(min(int(r["pool_threads"]) for r in rs))
    print("| %s | %s | %s | %d | %s | %s | %s | %d | %s | %d | %d |" % (system, target, names[mode], conns,
          span(rps, "%.0f"), span(p50, "%.2f"), span(p99, "%.2f"), served, pool, bad, other))
EOF

echo
echo "took ${SECONDS}s; raw results in $results"
if [ $failed != 0 ]; then
  echo
  echo "FAILED: see the FAIL lines above (non-2xx answers, socket errors or wrong values)" >&2
  exit 1
fi
