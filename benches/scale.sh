#!/usr/bin/env bash
# Scale figures for the README's performance section (issue 6), on this machine:
#
#   A. a 100,000-project scope file (1M allowlist entries): load + validate time and peak memory
#      (`scopegate check`), and the running gateway's memory with it;
#   B. p50/p99 of the benchmark workload with that file, without and during a storm of reloads
#      (the file rewritten every RELOAD_EVERY seconds, each rewrite a new generation);
#   C. memory after a million distinct job tokens (every request a new token: a forge lookup and
#      a cache entry each), against the cache bound (`[cache] max_entries`, 100,000 by default);
#   D. memory per idle keep-alive connection, at 10,000 connections.
#
# Uses the mock forge of ../shared/bench (nginx on 127.0.0.1:18081) and wrk, as run.sh does.
# Usage: bash benches/scale.sh [--skip-tokens] ; needs target/release/scopegate (cargo build --release).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH=${GWBENCH_DIR:-$ROOT/../shared/bench}
BIN=$ROOT/target/release/scopegate
LISTEN=127.0.0.1:18094
ADMIN=127.0.0.1:18095
UPSTREAM=http://127.0.0.1:18081
PROJECTS=100000
SECONDS_PER_RUN=${SECONDS_PER_RUN:-10}
RELOAD_EVERY=${RELOAD_EVERY:-0.5}
TOKENS=${TOKENS:-1000000}
IDLE_CONNS=${IDLE_CONNS:-10000}
SKIP_TOKENS=0
[ "${1-}" = "--skip-tokens" ] && SKIP_TOKENS=1

. "$ROOT/benches/common.sh"
bench_workdir scale
RUN=$WORK

say() { printf '%s\n' "$*"; }
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }

[ -x "$BIN" ] || { echo "build first: cargo build --release" >&2; exit 1; }
command -v wrk >/dev/null && command -v nginx >/dev/null || { echo "needs wrk and nginx (run ../shared/bench/run.sh once)" >&2; exit 1; }

# ---------------------------------------------------------------- the scope file
# The benchmark's policy (project N's job tokens reach N and N+1, never N+500), with every
# project also allowing 8 more projects outbound (4 by id, 4 by path): 1M allowlist entries.
python3 - "$PROJECTS" > "$RUN/scopes.toml" <<'EOF'
import sys
n = int(sys.argv[1])
out = ["[defaults]", "outbound = true", "inbound = false", ""]
for i in range(1, n + 1):
    extra = [i + d for d in (2, 3, 5, 7, 11, 13, 17, 19)]
    allow = [str(i + 1), f'"bench/p{i + 1}"'] + [str(e) for e in extra[:4]] + [f'"bench/p{e}"' for e in extra[4:]]
    out += ["[[project]]", f"id = {i}", f'path = "bench/p{i}"', "[project.outbound]", "enabled = true",
            f"allow = [{', '.join(allow)}]", ""]
print("\n".join(out))
EOF
say "== A. $PROJECTS projects, $((PROJECTS * 10)) allowlist entries ($(du -h "$RUN/scopes.toml" | cut -f1))"
/usr/bin/time -f '%e %M' -o "$RUN/check.time" "$BIN" check --scopes "$RUN/scopes.toml" >/dev/null 2>&1 || true
read -r CHECK_S CHECK_KIB < "$RUN/check.time"
say "scopegate check: ${CHECK_S} s, peak RSS $((CHECK_KIB / 1024)) MiB (read, parse, validate, compile)"

# ---------------------------------------------------------------- mock forge + gateway
if ! port_open 18081; then
  mkdir -p "$RUN/up/logs"
  [ -f /tmp/gwbench-big.bin ] || fallocate -l $((256 * 1024 * 1024)) /tmp/gwbench-big.bin
  # The config runs nginx in the foreground (daemon off), so $! is its master.
  nginx -p "$RUN/up/" -c "$BENCH/upstream.nginx.conf" -e "$RUN/up/error.log" &
  PIDS+=("$!")
  wait_port 18081 60
fi
cat > "$RUN/settings.toml" <<EOF
listen = "$LISTEN"
admin = "$ADMIN"
upstream = "$UPSTREAM"
scopes = "scopes.toml"
state_dir = ":memory:"
reload_debounce = "50ms"
[timeouts]
request_header = "10m"   # D keeps connections idle for longer than the default 10 s
[limits]
max_connections = $((IDLE_CONNS + 1000))
EOF
ulimit -n "$(ulimit -Hn)"
started=$(date +%s.%N)
"$BIN" run --config "$RUN/settings.toml" --log-level warn > "$RUN/gateway.log" 2>&1 &
GW=$!
PIDS+=("$GW")
wait_port "${LISTEN#*:}" 60
ready=$(date +%s.%N)
say "gateway up in $(python3 -c "print(round($ready - $started, 2))") s with the file; RSS $(( $(rss_kib $GW) / 1024 )) MiB"

metric() { curl -s "http://$ADMIN/metrics" | awk -v m="$1" '$1 == m {print $2}'; }
load() { wrk -t1 -c64 -d"${SECONDS_PER_RUN}s" -s "$BENCH/workload.lua" "http://$LISTEN" | grep -E '^(RESULT|STATUS)'; }

# ---------------------------------------------------------------- D. idle connections
say "== D. $IDLE_CONNS idle keep-alive connections"
rss0=$(rss_kib $GW)
with=$(python3 - "$LISTEN" "$IDLE_CONNS" "$GW" <<'EOF'
import socket, sys, time
host, port = sys.argv[1].split(":")
n, pid = int(sys.argv[2]), sys.argv[3]
req = b"GET /api/v4/projects/7/repository/files/README.md/raw?ref=main HTTP/1.1\r\nHost: x\r\nJOB-TOKEN: bench-token-7\r\n\r\n"
socks = []
# One request at a time, so the gateway reuses one upstream connection: what is measured is
# the client side's cost. Each connection then stays open, idle, kept alive.
for i in range(n):
    s = socket.create_connection((host, int(port)))
    s.sendall(req)
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(65536)
        if not chunk:
            sys.exit(f"connection closed early after {len(socks)} opened")
        buf += chunk
    socks.append(s)
time.sleep(1)
rss = int([l.split()[1] for l in open(f"/proc/{pid}/status") if l.startswith("VmRSS")][0])
print(rss)
for s in socks:
    s.close()
EOF
)
say "RSS idle before $((rss0 / 1024)) MiB, with $IDLE_CONNS idle connections $((with / 1024)) MiB: $(( (with - rss0) * 1024 / IDLE_CONNS )) bytes per connection"

# ---------------------------------------------------------------- B. reload storm
say "== B. p99 without and during a reload storm (file rewritten every ${RELOAD_EVERY}s)"
load | sed 's/^/quiet:  /'
gen0=$(metric scopegate_policy_generation)
(
  i=0
  end=$(( $(date +%s) + SECONDS_PER_RUN ))
  while [ "$(date +%s)" -lt "$end" ]; do
    i=$((i + 1))
    # A new generation each time: a changed comment changes the digest. Written like an
    # editor does (temporary file, rename).
    { cat "$RUN/scopes.toml"; echo "# storm $i"; } > "$RUN/scopes.toml.tmp"
    mv "$RUN/scopes.toml.tmp" "$RUN/scopes.toml"
    sleep "$RELOAD_EVERY"
  done
) &
STORM=$!
load | sed 's/^/storm:  /'
wait "$STORM"
# The last rewrite is taken once the generation stops moving.
gen1=$(metric scopegate_policy_generation)
for _ in $(seq 1 50); do
  sleep 0.5
  g=$(metric scopegate_policy_generation)
  [ "$g" = "$gen1" ] && break
  gen1=$g
done
say "generations during the storm: $((gen1 - gen0)); reload failures: $(curl -s "http://$ADMIN/metrics" | awk '/scopegate_reloads_total\{result="failure"\}/ {print $2}')"
say "RSS after the storm: $(( $(rss_kib $GW) / 1024 )) MiB"

# ---------------------------------------------------------------- C. a million tokens
if [ "$SKIP_TOKENS" = 0 ]; then
  say "== C. $TOKENS distinct job tokens (each a forge lookup, cached by digest)"
  cat > "$RUN/tokens.lua" <<'EOF'
-- Every request a new token bench-token-N (the mock forge knows every N); target = N.
-- START: where this run's tokens begin (each wrk run continues where the last one stopped).
local n = tonumber(os.getenv("START")) - 1
request = function()
  n = n + 1
  return wrk.format("GET", "/api/v4/projects/" .. n .. "/repository/files/README.md/raw?ref=main",
                    { ["JOB-TOKEN"] = "bench-token-" .. n })
end
done = function(summary) io.write(string.format("SENT %d\n", summary.requests)) end
EOF
  rss0=$(rss_kib $GW)
  # One wrk thread, so the counter is global; run until TOKENS requests have been sent.
  sent=0
  while [ "$sent" -lt "$TOKENS" ]; do
    out=$(START=$((sent + 1)) wrk -t1 -c64 -d20s -s "$RUN/tokens.lua" "http://$LISTEN")
    sent=$((sent + $(sed -n 's/^SENT //p' <<<"$out")))
    say "  sent $sent, RSS $(( $(rss_kib $GW) / 1024 )) MiB, forge lookups $(curl -s "http://$ADMIN/metrics" | awk '/^scopegate_forge_lookups_total\{result="job"\}/ {print $2}')"
  done
  say "RSS before $((rss0 / 1024)) MiB, after $sent tokens $(( $(rss_kib $GW) / 1024 )) MiB (cache bound: 100000 entries)"
fi

