#!/usr/bin/env bash
# CPU per request, by process: where the machine's time goes for each proxy of the comparison.
#
# Starts the benchmark's mock forge (:18081), nginx (:18082), HAProxy (:18083), nginx + Lua
# (:18085) with the configurations of ../shared/bench, and the gateway (:18084); then, for each
# proxy in turn, runs the benchmark's wrk workload (64 connections, one thread) and reads the
# user and system CPU time of every thread of the proxy, of the forge and of wrk from /proc
# before and after. Prints µs per request for each, and their total: on a machine whose cores
# the load saturates, requests/s follow that total.
#
#   bash benches/cpu.sh [--seconds S] [--binary PATH]
#
# --binary defaults to the PGO build (target/pgo/release/scopegate, from benches/pgo.sh) when
# there is one, else target/release/scopegate. Needs nginx with the Lua module, HAProxy, wrk
# and GNU time (Debian: nginx libnginx-mod-http-lua haproxy wrk time; run.sh installs the first
# four). Everything listens on 127.0.0.1 and is stopped on exit.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH=${GWBENCH_DIR:-$ROOT/../shared/bench}
SECONDS_PER_TARGET=10
BIN=""

die() { printf 'cpu.sh: error: %s\n' "$*" >&2; exit 1; }

while [ $# -gt 0 ]; do
  case $1 in
    --seconds)
      [[ ${2-} =~ ^[1-9][0-9]*$ ]] || die "--seconds needs a positive integer"
      SECONDS_PER_TARGET=$2; shift 2 ;;
    --binary) [ -n "${2-}" ] || die "--binary needs a path"; BIN=$2; shift 2 ;;
    -h|--help) sed -n '2,16p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) die "unknown argument '$1'" ;;
  esac
done

if [ -z "$BIN" ]; then
  BIN=$ROOT/target/pgo/release/scopegate
  [ -x "$BIN" ] || BIN=$ROOT/target/release/scopegate
fi
[ -x "$BIN" ] || die "no gateway binary at $BIN (cargo build --release, or bash benches/pgo.sh)"
for tool in nginx haproxy wrk python3; do
  command -v "$tool" >/dev/null 2>&1 || die "'$tool' is missing"
done
[ -x /usr/bin/time ] || die "GNU time is missing (apt-get install time)"
[ -f "$BENCH/workload.lua" ] || die "no benchmark harness at $BENCH (set GWBENCH_DIR)"

. "$ROOT/benches/common.sh"
bench_workdir cpu

start_nginx() { # NAME CONF -> master pid
  mkdir -p "$WORK/$1"
  nginx -p "$WORK/$1/" -c "$BENCH/$2" -e "$WORK/$1/error.log" >"$WORK/$1/stdout" 2>&1 &
  PIDS+=("$!")
}
python3 "$BENCH/scopes.py" 1500 >"$WORK/scopes.toml"
mkdir -p "$WORK/nginx-lua"
python3 "$BENCH/scopes.py" --json 1500 >"$WORK/nginx-lua/scopes.json"
printf 'workers = 1\n' >"$WORK/settings.toml"

start_nginx forge upstream.nginx.conf;  FORGE=${PIDS[-1]}
start_nginx nginx proxy.nginx.conf;     NGINX=${PIDS[-1]}
start_nginx nginx-lua proxy.nginx-lua.conf; LUA=${PIDS[-1]}
haproxy -f "$BENCH/proxy.haproxy.cfg" >"$WORK/haproxy.log" 2>&1 & PIDS+=("$!"); HAPROXY=$!
"$BIN" run --config "$WORK/settings.toml" --listen 127.0.0.1:18084 \
  --upstream http://127.0.0.1:18081 --scopes "$WORK/scopes.toml" --state-dir :memory: \
  --log-level warn >"$WORK/gateway.log" 2>&1 &
PIDS+=("$!"); GATEWAY=$!

url_of() { printf 'http://127.0.0.1:%s' "$1"; }
for port in 18081 18082 18083 18084 18085; do
  wait_port "$port" || die "nothing accepts on 127.0.0.1:$port (logs: $WORK)"
done

# A process and its children (nginx's workers), then the clock ticks of all their threads.
family() { echo "$1"; pgrep -P "$1" || true; }
ticks() { # PIDS... -> "user system" in clock ticks
  local u=0 s=0 a b f
  for p in "$@"; do
    for f in /proc/"$p"/task/*/stat; do
      [ -r "$f" ] || continue
      # Fields 14 and 15 (utime, stime), counted after the parenthesised command name.
      read -r a b < <(sed 's/^.*) //' "$f" | awk '{print $12, $13}') || continue
      u=$((u + a)); s=$((s + b))
    done
  done
  echo "$u $s"
}
HZ=$(getconf CLK_TCK)

measure() { # NAME PORT PROXY_PID
  local name=$1 port=$2 proxy=$3
  local procs forge_procs
  mapfile -t procs < <(family "$proxy")
  mapfile -t forge_procs < <(family "$FORGE")
  wrk -t1 -c64 -d2s -s "$BENCH/workload.lua" "$(url_of "$port")" >/dev/null
  read -r pu0 ps0 < <(ticks "${procs[@]}")
  read -r fu0 fs0 < <(ticks "${forge_procs[@]}")
  /usr/bin/time -f 'WRKCPU %U %S' -o "$WORK/wrk.time" \
    wrk -t1 -c64 -d"${SECONDS_PER_TARGET}s" -s "$BENCH/workload.lua" "$(url_of "$port")" \
    >"$WORK/wrk.out"
  read -r pu1 ps1 < <(ticks "${procs[@]}")
  read -r fu1 fs1 < <(ticks "${forge_procs[@]}")
  python3 - "$name" "$HZ" "$WORK/wrk.out" "$WORK/wrk.time" \
    $((pu1 - pu0)) $((ps1 - ps0)) $((fu1 - fu0)) $((fs1 - fs0)) <<'PY'
import re, sys
name, hz, out, timing = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
pu, ps, fu, fs = (int(x) for x in sys.argv[5:9])
text = open(out).read()
result = re.search(r"RESULT rps=([0-9.]+) p50_us=\d+ p99_us=(\d+) requests=(\d+)", text)
cpu = re.search(r"WRKCPU ([0-9.]+) ([0-9.]+)", open(timing).read())
if not result or not cpu or int(result[3]) == 0:
    sys.exit(f"cpu.sh: wrk reported no result or no CPU time for {name}")
wu, ws = float(cpu[1]), float(cpu[2])
rps, p99, requests = float(result[1]), int(result[2]), int(result[3])
per = lambda ticks: ticks * 1e6 / hz / requests
cells = [per(pu), per(ps), per(fu) + per(fs), (wu + ws) * 1e6 / requests]
print(f"{name:<10} {rps:>8.0f} {p99 / 1000:>7.2f} " + " ".join(f"{c:>8.1f}" for c in cells)
      + f" {sum(cells):>8.1f}")
PY
}

echo "CPU per request (µs), ${SECONDS_PER_TARGET} s of the benchmark workload each, gateway: $BIN"
printf '%-10s %8s %7s %8s %8s %8s %8s %8s\n' target req/s p99ms user system forge wrk total
measure nginx 18082 "$NGINX"
measure haproxy 18083 "$HAPROXY"
measure nginx-lua 18085 "$LUA"
measure gateway 18084 "$GATEWAY"
