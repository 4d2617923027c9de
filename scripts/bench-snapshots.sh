#!/usr/bin/env bash
# Snapshot figures of Hash Nimbus on loopback, printed as a table at the end (docs/benchmarks.md,
# "Snapshots"):
#   1. restart time with KEYS keys (16-byte keys, 100-byte values): single node, process start to the
#      HTTP API answering and to /health 200; 3 nodes restarted at once, until every node's applied index
#      equals the leader's commit; with a snapshot only, with a WAL tail, and with a cold page cache. The
#      data directories are built offline by examples/make_datadir.rs; one restart after a real HTTP load
#      of REAL_KEYS keys, and one of an offline directory of the same shape, validate that.
#   2. snapshot pause and write time with KEYS keys in a running node, and the latency of a
#      one-connection write loop around the snapshot;
#   3. catch-up of a follower CATCHUP entries behind, by snapshot (default flags) and by log.
# Every node, loop and wait is bounded in time; everything runs on 127.0.0.1 and is stopped at the end.
# Takes about 3-4 minutes on the project's 2-core machine after the build (about 7 with
# REAL_KEYS=1000000, whose HTTP load alone takes about 3 minutes); needs about 2 GB of disk under BENCH_DIR
# (default /tmp); uses python3 (the pollers), ss and dd.
# Usage: scripts/bench-snapshots.sh     env: KEYS (1000000) TAILS ("10000 100000") CATCHUP (100000)
#                                            REAL_KEYS (200000) RUNS (3) BENCH_DIR (/tmp)
#                                            HTTP0 (17021) RAFT0 (17031): first ports of the 3 nodes
#                                            PARTS ("restart validate pause catchup"): what to run
set -euo pipefail
cd "$(dirname "$0")/.."
KEYS=${KEYS:-1000000}
TAILS=${TAILS:-"10000 100000"}
CATCHUP=${CATCHUP:-100000}
REAL_KEYS=${REAL_KEYS:-200000}
RUNS=${RUNS:-3}
PARTS=${PARTS:-"restart validate pause catchup"}
part() { [[ " $PARTS " == *" $1 "* ]]; }
HTTP0=${HTTP0:-17021} # nodes' HTTP ports: HTTP0..HTTP0+2; Raft: RAFT0..RAFT0+2
RAFT0=${RAFT0:-17031}

cargo build --release --quiet --bin nimbus --example make_datadir --example write_load
bin=${CARGO_TARGET_DIR:-target}/release
work=$(mktemp -d -p "${BENCH_DIR:-/tmp}" nimbus-snapbench.XXXXXX)
declare -a node_pid=("" "" "")
stop_node() {
  local p=${node_pid[$1]}
  if [ -n "$p" ]; then
    kill "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
    node_pid[$1]=""
  fi
}
stop_all() { for n in 0 1 2; do stop_node $n; done; }
# alive N...: fails (stopping the script) if one of these nodes has exited.
alive() {
  local n
  for n in "$@"; do
    kill -0 "${node_pid[$n]}" 2>/dev/null || { echo "node $n exited; its log:" >&2; tail -5 "$work/n$n.log" >&2; exit 1; }
  done
}
cleanup() { stop_all; rm -rf "$work"; }
trap cleanup EXIT

# Polling helpers (every wait is bounded by its limit in seconds). The interpreter is resolved once: a
# version manager's shim can take a second to start on a busy machine.
python=$(python3 -c 'import sys; print(sys.executable)')
py() {
  "$python" - "$@" <<'EOF'
import json, os, sys, time, urllib.request, urllib.error

def get(port, path):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except Exception:
        return None, None

def status(port):
    c, body = get(port, "/status")
    return json.loads(body) if c == 200 else None

def leader_of(sts):
    ls = [s for s in sts.values() if s and s["role"] == "leader"]
    return max(ls, key=lambda s: s["term"]) if ls else None

cmd, args = sys.argv[1], sys.argv[2:]
if args and args[0].startswith("file:"):
    # T0 comes from a file written just before the nodes start; this poller is already running then.
    path = args[0][5:]
    open(path + ".ready", "w").close()
    waited = time.time()
    while not os.path.exists(path):
        if time.time() - waited > 60:
            sys.exit("no start time written")
        time.sleep(0.002)
    args[0] = open(path).read().strip()
if cmd == "health":  # T0 LIMIT PORT -> seconds to the first answer, seconds to /health 200
    t0, limit, port = float(args[0]), float(args[1]), int(args[2])
    up = None
    while time.time() - t0 < limit:
        c, _ = get(port, "/health")
        if c is not None and up is None:
            up = time.time() - t0
        if c == 200:
            print(f"{up:.2f} {time.time() - t0:.2f}")
            sys.exit(0)
        time.sleep(0.01)
    sys.exit(f"no /health 200 on {port} within {limit} s")
elif cmd == "caught":  # T0 LIMIT WATCH_PORTS ALL_PORTS -> seconds until each watched node applied the
    # leader's commit (and the leader committed its whole log), and that commit index
    t0, limit = float(args[0]), float(args[1])
    watch, every = [int(p) for p in args[2].split(",")], [int(p) for p in args[3].split(",")]
    while time.time() - t0 < limit:
        sts = {p: status(p) for p in every}
        L = leader_of(sts)
        if L and L["commit_index"] == L["last_index"]:
            c = L["commit_index"]
            if all(sts[p] and sts[p]["applied_index"] >= c for p in watch):
                print(f"{time.time() - t0:.2f} {c}")
                sys.exit(0)
        time.sleep(0.02)
    sys.exit(f"nodes {watch} did not catch up within {limit} s")
elif cmd == "leader":  # LIMIT ALL_PORTS -> the leader's HTTP port once one is known
    limit, every = float(args[0]), [int(p) for p in args[1].split(",")]
    t0 = time.time()
    while time.time() - t0 < limit:
        sts = {p: status(p) for p in every}
        L = leader_of(sts)
        if L:
            print([p for p, s in sts.items() if s is L][0])
            sys.exit(0)
        time.sleep(0.05)
    sys.exit("no leader")
elif cmd == "get":  # PORT DOTTED.PATH... -> the values, space-separated
    s = status(int(args[0]))
    out = []
    for path in args[1:]:
        v = s
        for k in path.split("."):
            v = v[k]
        out.append(str(v))
    print(" ".join(out))
elif cmd == "snapdone":  # LIMIT PORT TAKEN -> waits until stats.snapshots.taken >= TAKEN, not in progress
    limit, port, taken = float(args[0]), int(args[1]), int(args[2])
    t0 = time.time()
    while time.time() - t0 < limit:
        s = status(port)
        if s and s["stats"]["snapshots"]["taken"] >= taken and not s["stats"]["snapshots"]["in_progress"]:
            sys.exit(0)
        time.sleep(0.1)
    sys.exit(f"no snapshot on {port} within {limit} s")
EOF
}

now() { date +%s.%N; }
# A poller started before the nodes, so its own start-up is not timed: start_poll CMD LIMIT ARGS...; then
# go (records the start time) right before starting the nodes; then finish_poll; the result is in poll.out.
start_poll() {
  rm -f "$work/t0" "$work/t0.ready"
  local cmd=$1
  shift
  py "$cmd" "file:$work/t0" "$@" >"$work/poll.out" &
  poll_pid=$!
  local i
  for i in $(seq 1 3000); do
    [ -e "$work/t0.ready" ] && return 0
    sleep 0.01
  done
  echo "poller did not start" >&2
  exit 1
}
go() { now >"$work/t0.tmp" && mv "$work/t0.tmp" "$work/t0"; }
finish_poll() { wait "$poll_pid" || { echo "a wait timed out (see above)" >&2; exit 1; }; }
load1() { cut -d' ' -f1 /proc/loadavg; }
mib() { echo $(($1 / 1024)); } # KiB -> MiB
rss_mib() { mib "$(ps -o rss= -p "$1" | tr -d ' ')"; }
du_mib() { mib "$(du -sk "$1" | cut -f1)"; }
port() { echo $((HTTP0 + $1)); }
ports() { local s="" n; for ((n = 0; n < $1; n++)); do s+="${s:+,}$(port $n)"; done; echo "$s"; }
cluster_spec() { local s="" n; for ((n = 0; n < $1; n++)); do s+="${s:+;}$((n + 1)),127.0.0.1:$((RAFT0 + n))"; done; echo "$s"; }

# start_node N SIZE DIR [flags...]: node N of a SIZE-node cluster on data directory DIR (log: DIR.log).
# Refuses to start on a port someone else listens on (we would be measuring their node).
start_node() {
  local n=$1 size=$2 dir=$3 p
  shift 3
  for p in $(port "$n") $((RAFT0 + n)); do
    if ss -ltnH "sport = :$p" | grep -q .; then
      echo "port $p is in use by another process; set HTTP0 and RAFT0 to free ranges" >&2
      exit 1
    fi
  done
  RUST_LOG=${RUST_LOG:-info} "$bin/nimbus" --node "$n" --http "127.0.0.1:$(port "$n")" \
    --cluster "$(cluster_spec "$size")" --data-dir "$dir" "$@" 2>>"$dir.log" &
  node_pid[$n]=$!
}

# fresh_copy SRC DST [cold]: a copy of a data directory, synced; "cold" evicts it from the page cache.
fresh_copy() {
  rm -rf "$2" "$2.log"
  cp -a "$1" "$2"
  find "$2" -type f -exec sync {} +
  if [ "${3:-}" = cold ]; then
    find "$2" -type f -exec sh -c 'for f; do dd if="$f" iflag=nocache count=0 status=none; done' _ {} +
  fi
}

table=$work/table
row() { printf '| %s | %s | %s |\n' "$1" "$2" "$3" >>"$table"; echo "  -> $1: $2 (load $3)"; }

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(uname -sr)"
echo "start: $(date -u '+%Y-%m-%d %H:%M UTC'), $(uptime | sed 's/.*load/load/')"
echo "work directory: $work"

# ---- data directories built offline ----
tails=0
if part restart; then tails+=" $TAILS"; fi
echo "== building data directories offline: $KEYS keys, tails $tails"
# The snapshot records the membership, so 1-node and 3-node runs need directories of their own.
for tail in $tails; do
  for voters in 1 3; do
    "$bin/examples/make_datadir" "$work/base$voters-$tail" "$KEYS" "$tail" 2 "$voters" | sed 's/^/  /'
  done
done
empty_dir=$work/base-empty
mkdir -p "$empty_dir"

# ---- 1. restart ----
restart_single() { # LABEL SRC [cold] [flags...]
  local label=$1 src=$2 cold=""
  shift 2
  if [ "${1:-}" = cold ]; then cold=cold; shift; fi
  echo "== restart, single node: $label"
  for run in $(seq 1 "$RUNS"); do
    fresh_copy "$src" "$work/n0" $cold
    local l up health
    l=$(load1)
    start_poll health 120 "$(port 0)"
    go
    start_node 0 1 "$work/n0" "$@"
    finish_poll
    out=$(cat "$work/poll.out")
    read -r up health <<<"$out"
    alive 0
    local rss keys
    rss=$(rss_mib "${node_pid[0]}")
    keys=$(py get "$(port 0)" keys)
    stop_all
    row "restart 1 node: $label (run $run)" \
      "HTTP answers ${up} s, /health 200 ${health} s; ${keys} keys, RSS ${rss} MiB, data dir $(du_mib "$work/n0") MiB" "$l"
  done
}

restart_three() { # LABEL SRC [flags...]
  local label=$1 src=$2
  shift 2
  echo "== restart, 3 nodes at once: $label"
  for run in $(seq 1 $(((RUNS + 1) / 2))); do
    for n in 0 1 2; do fresh_copy "$src" "$work/n$n"; done
    local l took commit
    l=$(load1)
    start_poll caught 180 "$(ports 3)" "$(ports 3)"
    go
    for n in 0 1 2; do start_node $n 3 "$work/n$n" "$@"; done
    finish_poll
    out=$(cat "$work/poll.out")
    read -r took commit <<<"$out"
    alive 0 1 2
    local rss=""
    for n in 0 1 2; do rss+="${rss:+/}$(rss_mib "${node_pid[$n]}")"; done
    stop_all
    row "restart 3 nodes: $label (run $run)" \
      "all applied the leader's commit ($commit) after ${took} s; RSS ${rss} MiB" "$l"
  done
}

hold=(--snapshot-entries 10000000) # so that a WAL tail is not snapshotted away right after the restart
if part restart; then
restart_single "$KEYS keys, snapshot only" "$work/base1-0"
restart_single "$KEYS keys, snapshot only, cold page cache" "$work/base1-0" cold
for tail in $TAILS; do
  restart_single "$KEYS keys, snapshot + $tail-entry WAL tail" "$work/base1-$tail" "${hold[@]}"
done
restart_three "$KEYS keys, snapshot only" "$work/base3-0"
last_tail=${TAILS##* }
restart_three "$KEYS keys, snapshot + $last_tail-entry WAL tail" "$work/base3-$last_tail" "${hold[@]}"
fi

# ---- 1b. validation: a real HTTP load, restarted, against an offline directory of the same shape ----
if part validate; then
echo "== validation: $REAL_KEYS keys written through a follower (64 connections), then all 3 restarted"
for n in 0 1 2; do rm -rf "$work/n$n" "$work/n$n.log"; done
for n in 0 1 2; do start_node $n 3 "$work/n$n"; done
leader=$(py leader 30 "$(ports 3)")
follower=$((leader == $(port 0) ? $(port 1) : $(port 0)))
l=$(load1)
"$bin/examples/write_load" load "127.0.0.1:$follower" "$REAL_KEYS" 64 600 a00001 | tee "$work/load.out" | sed 's/^/  /'
py caught "$(now)" 60 "$(ports 3)" "$(ports 3)" >/dev/null
out=$(py get "$leader" commit_index stats.snapshots.last_index keys stats.snapshots.taken stats.snapshots.last_pause_us stats.snapshots.last_write_ms)
read -r commit snap keys taken pause write <<<"$out"
rss=""
for n in 0 1 2; do rss+="${rss:+/}$(rss_mib "${node_pid[$n]}")"; done
row "HTTP load of $REAL_KEYS keys via a follower" \
  "$(sed 's/^load: //' "$work/load.out"); leader: $keys keys, commit $commit, $taken snapshots, the last at $snap (pause $((pause / 1000)) ms, write $write ms); RSS ${rss} MiB, data dirs $(du_mib "$work/n0")/$(du_mib "$work/n1")/$(du_mib "$work/n2") MiB" "$l"
stop_all
l=$(load1)
start_poll caught 180 "$(ports 3)" "$(ports 3)"
go
for n in 0 1 2; do start_node $n 3 "$work/n$n"; done
finish_poll
out=$(cat "$work/poll.out")
read -r took c <<<"$out"
alive 0 1 2
rss=""
for n in 0 1 2; do rss+="${rss:+/}$(rss_mib "${node_pid[$n]}")"; done
stop_all
row "restart 3 nodes: the HTTP-loaded cluster ($keys keys, $((commit - snap))-entry tail after the leader's snapshot)" \
  "all applied the leader's commit ($c) after ${took} s; RSS ${rss} MiB" "$l"
# Same shape: a snapshot at the leader's snapshot index (its entries are puts, but for one no-op per
# leader), then the same number of entries in the WAL.
snap_real=$((snap > 0 ? snap : 1))
tail_real=$((commit - snap_real))
"$bin/examples/make_datadir" "$work/base-real" "$snap_real" "$tail_real" | sed 's/^/  /'
restart_three "offline directory of the same shape ($snap_real keys + $tail_real-entry tail)" "$work/base-real"
rm -rf "$work/base-real"
fi

# ---- 2. snapshot pause and write time in a running node ----
snapshot_pause() { # LABEL SIZE
  local label=$1 size=$2
  echo "== snapshot with $KEYS keys in a running node: $label"
  for ((n = 0; n < size; n++)); do fresh_copy "$work/base$size-0" "$work/n$n"; done
  for ((n = 0; n < size; n++)); do start_node $n "$size" "$work/n$n"; done
  local leader
  leader=$(py leader 30 "$(ports "$size")")
  py caught "$(now)" 60 "$(ports "$size")" "$(ports "$size")" >/dev/null
  local l rss_before rss_after=""
  l=$(load1)
  rss_before=$(rss_mib "${node_pid[$((leader - HTTP0))]}")
  # Default --snapshot-entries (10,000): the snapshot starts about 10,000 writes into the loop.
  "$bin/examples/write_load" latency "127.0.0.1:$leader" 15000 120 b00002 >"$work/latency.out"
  sed 's/^/  /' "$work/latency.out"
  local pauses="" writes="" size_b="" n
  for ((n = 0; n < size; n++)); do
    py snapdone 60 "$(port $n)" 1
    out=$(py get "$(port $n)" stats.snapshots.last_pause_us stats.snapshots.last_write_ms stats.snapshots.last_size_bytes)
    read -r p w s <<<"$out"
    local mark=""
    [ "$size" -gt 1 ] && mark=$([ "$(port $n)" = "$leader" ] && echo "L:" || echo "F:")
    pauses+="${pauses:+/}$mark$((p / 1000))"
    writes+="${writes:+/}$mark$w"
    size_b=$s
    rss_after+="${rss_after:+/}$(rss_mib "${node_pid[$n]}")"
  done
  alive $(seq 0 $((size - 1)))
  stop_all
  row "snapshot of $KEYS keys: $label" \
    "pause (clone) ${pauses} ms, write ${writes} ms, $((size_b / 1048576)) MiB; RSS before ${rss_before} MiB (leader), after ${rss_after} MiB; 1-conn writes to the leader: $(grep '^latency:' "$work/latency.out" | sed 's/^latency: //')" "$l"
}
if part pause; then
snapshot_pause "single node" 1
snapshot_pause "3 nodes (L: leader, F: follower)" 3
fi

# ---- 3. catch-up of a follower CATCHUP entries behind ----
catchup() { # LABEL BASE [flags...]
  local label=$1 base=$2
  shift 2
  echo "== catch-up of a follower $CATCHUP entries behind: $label"
  for n in 0 1 2; do
    if [ "$base" = "$empty_dir" ]; then rm -rf "$work/n$n" "$work/n$n.log"; else fresh_copy "$base" "$work/n$n"; fi
  done
  for n in 0 1 2; do start_node $n 3 "$work/n$n" "$@"; done
  local leader f o
  leader=$(py leader 30 "$(ports 3)")
  py caught "$(now)" 60 "$(ports 3)" "$(ports 3)" >/dev/null
  f=$(((leader - HTTP0 + 1) % 3)) # the stopped follower
  o=$(((leader - HTTP0 + 2) % 3)) # the follower that takes the writes
  local stopped_at
  stopped_at=$(py get "$(port $f)" applied_index)
  stop_node $f
  "$bin/examples/write_load" load "127.0.0.1:$(port $o)" "$CATCHUP" 64 600 c00003 | sed 's/^/  /'
  py caught "$(now)" 60 "$leader,$(port $o)" "$(ports 3)" >/dev/null
  local l took commit
  l=$(load1)
  start_poll caught 300 "$(port $f)" "$(ports 3)"
  go
  start_node $f 3 "$work/n$f" "$@"
  finish_poll
  out=$(cat "$work/poll.out")
  read -r took commit <<<"$out"
  alive 0 1 2
  local inst snaps_l size_l installed_line
  inst=$(py get "$(port $f)" stats.snapshots.installed)
  out=$(py get "$leader" stats.snapshots.taken stats.snapshots.last_size_bytes)
  read -r snaps_l size_l <<<"$out"
  installed_line=$(grep -o "installed the leader's snapshot.*" "$work/n$f.log" | tail -1 || true)
  stop_all
  row "catch-up, $CATCHUP entries behind: $label" \
    "$((commit - stopped_at)) entries behind; applied the leader's commit ($commit) ${took} s after its start; snapshots installed: $inst${installed_line:+ ($installed_line)}; leader took $snaps_l snapshots, last $((size_l / 1048576)) MiB" "$l"
}
if part catchup; then
catchup "empty cluster, default flags (--snapshot-entries 10000)" "$empty_dir"
catchup "empty cluster, --snapshot-entries 1000000 (no snapshot: by log)" "$empty_dir" --snapshot-entries 1000000
catchup "$KEYS keys, default flags" "$work/base3-0"
catchup "$KEYS keys, --snapshot-entries 10000000 (by log)" "$work/base3-0" --snapshot-entries 10000000
fi

echo
echo "end: $(date -u '+%Y-%m-%d %H:%M UTC'), $(uptime | sed 's/.*load/load/')"
echo
echo "| measurement | result | load (1 min) |"
echo "|---|---|---:|"
cat "$table"
