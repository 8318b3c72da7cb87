#!/usr/bin/env bash
# Profile-guided release build of scopegate: build an instrumented binary, train it on loopback
# (a stand-in forge served by nginx, wrk driving a mix of job-token, tokenless and body-carrying
# requests, then `scopegate demo --once`), merge the profile, rebuild with it.
#
#   bash benches/pgo.sh            # prints the path of the optimized binary
#
# Output: target/pgo/release/scopegate (and the merged profile, target/pgo/scopegate-HASH.profdata:
# cargo tracks RUSTFLAGS, not the profile's contents, so a new profile gets a new path).
# Needs llvm-profdata of the LLVM rustc was built with (Debian: apt-get install llvm-N, where N
# is the major of `rustc -vV`'s "LLVM version"; or `rustup component add llvm-tools`), nginx,
# wrk and curl. The profile changes code layout and inlining only, never behaviour: the tests
# run against the plain build. Two full release builds: ~12 minutes on 2 cores.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
GEN_DIR=$ROOT/target/pgo-gen      # instrumented build (its own target dir: other RUSTFLAGS)
RAW_DIR=$GEN_DIR/profraw           # fixed, so that RUSTFLAGS (and the cached build) stay the same
USE_DIR=$ROOT/target/pgo          # optimized build
FORGE_PORT=18181 GATEWAY_PORT=18184 DEMO_PORT=18187
PROJECTS=1500 TRAIN_SECONDS=15

say() { printf 'pgo.sh: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

# ------------------------------------------------------------------ tools
llvm_major=$(rustc -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')
[ -n "$llvm_major" ] || die "cannot read rustc's LLVM version from 'rustc -vV'"
profdata=""
for c in "llvm-profdata-$llvm_major" "/usr/lib/llvm-$llvm_major/bin/llvm-profdata" \
         "$(rustc --print sysroot)/lib/rustlib/$(rustc -vV | sed -n 's/^host: //p')/bin/llvm-profdata"; do
  if command -v "$c" >/dev/null 2>&1; then profdata=$c; break; fi
done
[ -n "$profdata" ] || die "no llvm-profdata for LLVM $llvm_major (apt-get install llvm-$llvm_major, or rustup component add llvm-tools)"
for tool in nginx wrk curl; do
  command -v "$tool" >/dev/null 2>&1 || die "'$tool' is missing (apt-get install $tool)"
done

. "$ROOT/benches/common.sh"
bench_workdir pgo

# ------------------------------------------------------------------ 1. instrumented build
say "instrumented build ($GEN_DIR)"
(cd "$ROOT" && RUSTFLAGS="${RUSTFLAGS:-} -Cprofile-generate=$RAW_DIR" \
  cargo build --release --locked --target-dir "$GEN_DIR" >&2)

# ------------------------------------------------------------------ 2. training
# The stand-in forge: token lookups (bench-token-N belongs to project N), project API calls.
mkdir -p "$WORK/forge"
cat >"$WORK/forge/nginx.conf" <<EOF
worker_processes 1;
pid nginx.pid;
error_log error.log error;
daemon off;
events { worker_connections 4096; }
http {
    access_log off;
    default_type application/json;
    keepalive_requests 1000000;
    client_body_temp_path body; proxy_temp_path proxy; fastcgi_temp_path fastcgi;
    uwsgi_temp_path uwsgi; scgi_temp_path scgi;
    client_max_body_size 10m;
    map \$http_job_token \$job_id {
        default "";
        "~^train-token-([1-9][0-9]{0,8})\$" \$1;
    }
    server {
        listen 127.0.0.1:$FORGE_PORT backlog=4096;
        location = /api/v4/job {
            if (\$job_id = "") { return 401 '{"message":"401 Unauthorized"}'; }
            return 200 '{"id":\$job_id,"status":"running","pipeline":{"id":\$job_id,"project_id":\$job_id}}';
        }
        location ~ "^/api/v4/projects/(?:train/p)?([1-9][0-9]{0,8})\$" {
            return 200 '{"id":\$1,"path_with_namespace":"train/p\$1"}';
        }
        location / {
            return 200 '{"file_name":"README.md","file_path":"README.md","size":5,"encoding":"text","ref":"main","content":"train"}';
        }
    }
}
EOF
nginx -p "$WORK/forge/" -c "$WORK/forge/nginx.conf" -e "$WORK/forge/error.log" \
  </dev/null >"$WORK/forge/stderr.log" 2>&1 &
PIDS+=($!)
wait_port "$FORGE_PORT" || die "nothing accepts on 127.0.0.1:$FORGE_PORT (logs: $WORK)"

# Project N may reach project N+1; everything else is out of scope.
awk -v n="$PROJECTS" 'BEGIN {
  print "[defaults]\noutbound = true\ninbound = false\nreport_only = false\n"
  for (i = 1; i <= n; i++)
    printf "[[project]]\nid = %d\npath = \"train/p%d\"\n\n[project.outbound]\nenabled = true\nallow = [%d]\n\n", i, i, i + 1
}' >"$WORK/scopes.toml"

# A mix of what bots send: job tokens in each carrier, numeric and path targets, denials,
# JSON and form bodies, tokenless traffic.
cat >"$WORK/train.lua" <<'EOF'
math.randomseed(7)
local pool = {}
local sfx = "/repository/files/README.md/raw?ref=main"
for k = 1, 5000 do
  local i = math.random(1, 1000)
  local r = math.random(1, 10)
  local t = (r <= 4) and i or ((r <= 8) and (i + 1) or (i + 500))
  local p = (math.random(1, 2) == 1) and tostring(t) or ("train%2Fp" .. t)
  local tok = "train-token-" .. i
  local c = math.random(1, 20)
  if c <= 12 then
    pool[k] = wrk.format("GET", "/api/v4/projects/" .. p .. sfx, { ["JOB-TOKEN"] = tok })
  elseif c <= 13 then
    pool[k] = wrk.format("GET", "/api/v4/projects/" .. p .. sfx .. "&job_token=" .. tok)
  elseif c <= 15 then
    pool[k] = wrk.format("POST", "/api/v4/projects/" .. p .. "/merge_requests",
      { ["JOB-TOKEN"] = tok, ["Content-Type"] = "application/json" },
      '{"source_branch":"fix","target_branch":"main","title":"Remediation"}')
  elseif c <= 16 then
    pool[k] = wrk.format("PUT", "/api/v4/projects/" .. p .. "/merge_requests/1/merge",
      { ["JOB-TOKEN"] = tok, ["Content-Type"] = "application/x-www-form-urlencoded" },
      "should_remove_source_branch=true")
  elseif c <= 17 then
    pool[k] = wrk.format("GET", "/api/v4/projects/" .. p .. "/jobs/1/artifacts",
      { ["Authorization"] = "Bearer " .. tok })
  else
    pool[k] = wrk.format("GET", "/api/v4/projects/" .. p .. sfx)
  end
end
local idx = 0
function request() idx = idx % #pool + 1; return pool[idx] end
ok, denied, other = 0, 0, 0
function response(status) if status == 200 then ok = ok + 1 elseif status == 403 then denied = denied + 1 else other = other + 1 end end
local threads = {}
function setup(t) table.insert(threads, t) end
function done()
  local a, d, o = 0, 0, 0
  for _, t in ipairs(threads) do a = a + t:get("ok"); d = d + t:get("denied"); o = o + t:get("other") end
  io.write(string.format("TRAINED 200=%d 403=%d other=%d\n", a, d, o))
end
EOF

BIN=$GEN_DIR/release/scopegate
rm -rf "$RAW_DIR"
say "training ($TRAIN_SECONDS s of wrk, then the demo walkthrough)"
"$BIN" run --listen "127.0.0.1:$GATEWAY_PORT" --admin "127.0.0.1:$((GATEWAY_PORT + 1))" \
  --upstream "http://127.0.0.1:$FORGE_PORT" --scopes "$WORK/scopes.toml" \
  --state-dir "$WORK/state" --log-level warn </dev/null >"$WORK/gateway.log" 2>&1 &
gw=$!
PIDS+=($gw)
wait_port "$GATEWAY_PORT" || die "nothing accepts on 127.0.0.1:$GATEWAY_PORT (logs: $WORK)"
wrk -t1 -c64 -d"${TRAIN_SECONDS}s" -s "$WORK/train.lua" "http://127.0.0.1:$GATEWAY_PORT" >"$WORK/wrk.log" 2>&1 ||
  die "wrk failed: $(tail -n 5 "$WORK/wrk.log")"
curl -fsS -o /dev/null "http://127.0.0.1:$((GATEWAY_PORT + 1))/metrics" || die "admin /metrics failed"
# Forwarded and denied both, or the profile would miss a hot path.
trained=$(grep '^TRAINED' "$WORK/wrk.log" || true)
say "${trained:-no TRAINED line from wrk}"
[[ $trained =~ 200=[1-9].*403=[1-9] ]] || die "training did not both forward and deny: $(tail -n 5 "$WORK/wrk.log")"
# The profile is written when the process exits normally: a graceful stop.
kill -TERM "$gw"
wait "$gw" || die "the instrumented gateway did not stop cleanly (log: $WORK/gateway.log)"
"$BIN" demo --once --listen "127.0.0.1:$DEMO_PORT" </dev/null >"$WORK/demo.log" 2>&1 ||
  die "demo --once failed: $(tail -n 5 "$WORK/demo.log")"
ls "$RAW_DIR"/*.profraw >/dev/null 2>&1 || die "training wrote no profile"
mkdir -p "$USE_DIR"
"$profdata" merge -o "$WORK/merged.profdata" "$RAW_DIR"/*.profraw
PROFILE=$USE_DIR/scopegate-$(sha256sum "$WORK/merged.profdata" | cut -c1-16).profdata
rm -f "$USE_DIR"/scopegate-*.profdata
mv "$WORK/merged.profdata" "$PROFILE"

# ------------------------------------------------------------------ 3. optimized build
say "optimized build ($USE_DIR)"
(cd "$ROOT" && RUSTFLAGS="${RUSTFLAGS:-} -Cprofile-use=$PROFILE -Cllvm-args=-pgo-warn-missing-function=false" \
  cargo build --release --locked --target-dir "$USE_DIR" >&2)
echo "$USE_DIR/release/scopegate"
