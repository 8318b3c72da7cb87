# Sourced by the benchmark scripts (pgo.sh, scale.sh, cpu.sh): one work directory per run,
# the servers a script starts stopped when it exits, and waiting for them to listen.

# bench_workdir NAME: WORK becomes a fresh /tmp/scopegate-NAME.* directory and PIDS an empty
# list; on exit every PID in PIDS is stopped and WORK removed.
bench_workdir() {
  WORK=$(mktemp -d "/tmp/scopegate-$1.XXXXXX")
  PIDS=()
  trap bench_cleanup EXIT
}

bench_cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  # Only the listed ones: a script's other background jobs are its own to end.
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# wait_port PORT [SECONDS]: until something accepts on 127.0.0.1:PORT (30 s by default);
# fails when nothing does in time.
wait_port() {
  local deadline=$((SECONDS + ${2:-30}))
  until port_open "$1"; do
    [ "$SECONDS" -lt "$deadline" ] || return 1
    sleep 0.1
  done
}
