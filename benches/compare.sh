#!/usr/bin/env bash
# The whole-proxy comparison of the README's performance section: scopegate against nginx,
# HAProxy and nginx + Lua (and the upstream hit directly), with ../shared/bench/run.sh.
#
#   bash benches/compare.sh                 # 3 rounds x 10 s, as in the README
#   bash benches/compare.sh --seconds 3 --rounds 2 --access-log
#
# --access-log keeps the gateway's per-request log line (the nginx and HAProxy baselines log
# none, so the default is --log-level warn). Other arguments go to run.sh.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH=${GWBENCH_DIR:-$ROOT/../shared/bench}
LOG="--log-level warn"
ARGS=()
for a in "$@"; do
  if [ "$a" = "--access-log" ]; then LOG=""; else ARGS+=("$a"); fi
done

cd "$ROOT"
cargo build --release --locked
SCOPES=$(mktemp /tmp/scopegate-bench-scopes.XXXXXX.toml)
trap 'rm -f "$SCOPES"' EXIT
python3 "$BENCH/scopes.py" 1500 > "$SCOPES"
bash "$BENCH/run.sh" "${ARGS[@]}" --gateway \
  "$ROOT/target/release/scopegate run --listen {listen} --upstream {upstream} --scopes $SCOPES --state-dir :memory: $LOG"
