#!/usr/bin/env bash
# The whole-proxy comparison of the README's performance section: scopegate against nginx,
# HAProxy and nginx + Lua (and the upstream hit directly), with ../shared/bench/run.sh.
#
#   bash benches/compare.sh                 # 3 rounds x 10 s, as in the README
#   bash benches/compare.sh --seconds 3 --rounds 2 --access-log
#   bash benches/compare.sh --no-pgo        # the plain `cargo build --release` binary
#
# The gateway measured is the profile-guided build of benches/pgo.sh (what the README's table
# shows); --no-pgo measures the plain release build instead. --access-log keeps the gateway's
# per-request log line (the nginx and HAProxy baselines log none, so the default is
# --log-level warn). Other arguments go to run.sh.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH=${GWBENCH_DIR:-$ROOT/../shared/bench}
LOG="--log-level warn"
PGO=1
ARGS=()
for a in "$@"; do
  case $a in
    --access-log) LOG="" ;;
    --no-pgo) PGO=0 ;;
    *) ARGS+=("$a") ;;
  esac
done

cd "$ROOT"
if [ "$PGO" = 1 ]; then
  BIN=$(bash "$ROOT/benches/pgo.sh")
else
  cargo build --release --locked
  BIN=$ROOT/target/release/scopegate
fi
SCOPES=$(mktemp /tmp/scopegate-bench-scopes.XXXXXX.toml)
trap 'rm -f "$SCOPES"' EXIT
python3 "$BENCH/scopes.py" 1500 > "$SCOPES"
bash "$BENCH/run.sh" "${ARGS[@]}" --gateway \
  "$BIN run --listen {listen} --upstream {upstream} --scopes $SCOPES --state-dir :memory: $LOG"
