#!/usr/bin/env bash
# The whole-proxy comparison of the README's performance section: scopegate against nginx,
# HAProxy and nginx + Lua (and the upstream hit directly), with ../shared/bench/run.sh.
#
#   bash benches/compare.sh                 # 3 rounds x 10 s, as in the README
#   bash benches/compare.sh --seconds 3 --rounds 2 --access-log
#   bash benches/compare.sh --no-pgo        # the plain `cargo build --release` binary
#   bash benches/compare.sh --workers 0     # one worker thread per CPU (the product's default)
#
# The gateway measured is the profile-guided build of benches/pgo.sh (what the README's table
# shows); --no-pgo measures the plain release build instead. The gateway runs one worker thread
# (`workers = 1`), as the baselines run one worker each (nginx `worker_processes 1`, HAProxy
# `nbthread 1`); --workers N sets another count. --access-log keeps the gateway's
# per-request log line (the nginx and HAProxy baselines log none, so the default is
# --log-level warn). Other arguments go to run.sh.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH=${GWBENCH_DIR:-$ROOT/../shared/bench}
LOG="--log-level warn"
PGO=1
WORKERS=1
ARGS=()
while [ $# -gt 0 ]; do
  case $1 in
    --access-log) LOG="" ;;
    --no-pgo) PGO=0 ;;
    --workers)
      [[ ${2-} =~ ^[0-9]+$ ]] || { echo "compare.sh: --workers needs a number" >&2; exit 2; }
      WORKERS=$2; shift ;;
    *) ARGS+=("$1") ;;
  esac
  shift
done

cd "$ROOT"
if [ "$PGO" = 1 ]; then
  BIN=$(bash "$ROOT/benches/pgo.sh")
else
  cargo build --release --locked
  BIN=$ROOT/target/release/scopegate
fi
SCOPES=$(mktemp /tmp/scopegate-bench-scopes.XXXXXX.toml)
SETTINGS=$(mktemp /tmp/scopegate-bench-settings.XXXXXX.toml)
trap 'rm -f "$SCOPES" "$SETTINGS"' EXIT
python3 "$BENCH/scopes.py" 1500 > "$SCOPES"
printf 'workers = %s\n' "$WORKERS" > "$SETTINGS"
bash "$BENCH/run.sh" "${ARGS[@]}" --gateway \
  "$BIN run --config $SETTINGS --listen {listen} --upstream {upstream} --scopes $SCOPES --state-dir :memory: $LOG"
