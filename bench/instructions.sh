#!/usr/bin/env bash
# Instructions per proxied request, tollgate beside nginx, counted by
# valgrind's callgrind: see bench/README.md ("Instructions per request").
#
#   bash bench/instructions.sh
#
# Throughput on a 2-core machine shared with the load generator moves by
# 10-20 % from one run to the next; user-space instructions do not (the same
# binary and load count the same within a fraction of a percent), so a
# change to the request path can be A/B-ed by this count where wrk cannot
# tell the binaries apart. It counts user space only (the kernel's share,
# about half of each proxy's CPU, is not in it), and under callgrind each
# process runs on one core at a fraction of its speed, so batching differs
# from a loaded gateway (the call writer gathers smaller batches).
#
# Environment knobs (defaults in brackets):
#   BENCH_TOLLGATE_BIN     use this tollgate binary instead of building the
#                          `profiling` profile (release code with line tables)
#   BENCH_SECONDS [8]      measured seconds per target (after 2 s of warm-up)
#   BENCH_CONNS [8]        wrk connections (one wrk thread)
#   BENCH_CALL_LOG [on]    off = calls.log: false
#   BENCH_RESULTS_DIR [bench/results]   where the JSON goes
#   BENCH_KEEP_TMP [0]     1 = keep the temp dir (callgrind files, logs)
#   BENCH_JOBS [2]         cargo -j
#   CARGO_TARGET_DIR [$HOME/.cache/tollgate-target]
#
# Everything listens on 127.0.0.1 only.
set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$BENCH_DIR/.." && pwd)"
SECONDS_MEASURED="${BENCH_SECONDS:-8}"
CONNS="${BENCH_CONNS:-8}"
CALL_LOG="${BENCH_CALL_LOG:-on}"
RESULTS_DIR="${BENCH_RESULTS_DIR:-$BENCH_DIR/results}"
KEEP_TMP="${BENCH_KEEP_TMP:-0}"
JOBS="${BENCH_JOBS:-2}"
CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/tollgate-target}"
[[ "$CARGO_TARGET_DIR" == /* ]] || CARGO_TARGET_DIR="$PWD/$CARGO_TARGET_DIR"
export CARGO_TARGET_DIR
for v in $(env | grep -o '^TOLLGATE_[A-Z0-9_]*' || true); do unset "$v"; done

LOG_TAG=bench-instr
HOST=127.0.0.1
UPSTREAM_PORT=18001
NGINX_PORT=18002
TG_PORT=18080
TG_ADMIN_PORT=19080
ADMIN_TOKEN=bench-token
UPSTREAM_BODY='{"ok":true,"message":"hello from upstream"}'
# shellcheck source=bench/lib.sh
source "$BENCH_DIR/lib.sh"
trap cleanup EXIT

# measure NAME URL: warm up, zero the counters of every running callgrind
# process (one target runs at a time), run wrk, dump; the wrk outputs go to
# $WORK/NAME-warm-wrk.txt and $WORK/NAME-wrk.txt. callgrind_control reaches
# tollgate but not nginx's forked workers: nginx is counted from its final
# files, over the warm-up's requests and the measured ones.
measure() {
  local name="$1" url="$2"
  wrk -t1 -c"$CONNS" -d2s "$url" >"$WORK/$name-warm-wrk.txt"
  callgrind_control --zero >/dev/null
  wrk -t1 -c"$CONNS" -d"${SECONDS_MEASURED}s" "$url" >"$WORK/$name-wrk.txt"
  callgrind_control --dump >/dev/null
  log "$name: $(grep -E 'Requests/sec' "$WORK/$name-wrk.txt" | xargs)"
}

main() {
  ensure_tools
  command -v valgrind >/dev/null 2>&1 && command -v callgrind_control >/dev/null 2>&1 ||
    die "valgrind (with callgrind_control) is needed: apt-get install valgrind"
  if [[ -n "${BENCH_TOLLGATE_BIN:-}" ]]; then
    BIN="$BENCH_TOLLGATE_BIN"
    [[ -x "$BIN" ]] || die "BENCH_TOLLGATE_BIN=$BIN is not an executable"
  else
    log "building tollgate (cargo build --profile profiling -j$JOBS -p tollgate)"
    cargo build --profile profiling -j"$JOBS" -p tollgate || die "cargo build FAILED"
    BIN="$CARGO_TARGET_DIR/profiling/tollgate"
  fi
  local p
  for p in $UPSTREAM_PORT $NGINX_PORT $TG_PORT $TG_ADMIN_PORT; do
    if port_busy "$p"; then die "port $HOST:$p is already in use"; fi
  done
  WORK="$(mktemp -d "${TMPDIR:-/tmp}/tollgate-instr.XXXXXX")"
  log "temp dir: $WORK"
  nginx_setup
  write_upstream_conf >"$WORK/upstream.conf"
  start_nginx upstream
  wait_http "http://$HOST:$UPSTREAM_PORT/hello" 10 "$LAST_PID" || die "nginx upstream did not start"

  # nginx, its workers counted (valgrind follows fork; one file per process).
  write_proxy_conf nginx-proxy "$NGINX_PORT" >"$WORK/nginx-proxy.conf"
  mkdir -p "$WORK/cg-nginx"
  start_nginx nginx-proxy valgrind --tool=callgrind --callgrind-out-file="$WORK/cg-nginx/cg.%p"
  local nginx_pid=$LAST_PID
  wait_http "http://$HOST:$NGINX_PORT/bench/hello" 60 "$nginx_pid" || die "nginx proxy did not start"
  measure nginx "http://$HOST:$NGINX_PORT/bench/hello"
  kill -TERM "$nginx_pid" 2>/dev/null || true
  wait "$nginx_pid" 2>/dev/null || true

  mkdir -p "$WORK/cg-tollgate" "$WORK/tg"
  env TOLLGATE_ADMIN_TOKEN="$ADMIN_TOKEN" TOLLGATE_DATA_DIR="$WORK/tg" \
    TOLLGATE_GATEWAY__LISTEN="$HOST:$TG_PORT" TOLLGATE_ADMIN__LISTEN="$HOST:$TG_ADMIN_PORT" \
    TOLLGATE_LOG__LEVEL=warn $([[ "$CALL_LOG" == off ]] && echo TOLLGATE_CALLS__LOG=false) \
    valgrind --tool=callgrind --separate-threads=yes \
    --callgrind-out-file="$WORK/cg-tollgate/cg.out" "$BIN" serve >"$WORK/tollgate.log" 2>&1 &
  local tg_pid=$!
  PIDS+=("$tg_pid")
  wait_http "http://$HOST:$TG_PORT/_tollgate/ready" 120 "$tg_pid" || {
    show_log "$WORK/tollgate.log"
    die "tollgate did not start under valgrind"
  }
  TOLLGATE_ADMIN_TOKEN="$ADMIN_TOKEN" "$BIN" apply -f "$BENCH_DIR/tollgate-bench.yaml" \
    --admin-url "http://$HOST:$TG_ADMIN_PORT" >"$WORK/apply.log" 2>&1 ||
    { show_log "$WORK/apply.log"; die "tollgate apply failed"; }
  local deadline=$((SECONDS + 30))
  until curl -fsS -o /dev/null "http://$HOST:$TG_PORT/bench/hello" 2>/dev/null; do
    ((SECONDS < deadline)) || die "the bench route did not go live"
    sleep 0.2
  done
  measure tollgate "http://$HOST:$TG_PORT/bench/hello"
  kill -TERM "$tg_pid" 2>/dev/null || true
  wait "$tg_pid" 2>/dev/null || true

  mkdir -p "$RESULTS_DIR"
  local stamp commit
  stamp="$(date -u +%Y%m%dT%H%M%SZ)"
  commit="$(git -C "$REPO_DIR" rev-parse --short HEAD 2>/dev/null || echo unknown)"
  if [[ -n "$(git -C "$REPO_DIR" status --porcelain 2>/dev/null)" ]]; then commit="$commit-dirty"; fi
  # The checkout's commit; a binary given from elsewhere may be another's.
  if [[ -n "${BENCH_TOLLGATE_BIN:-}" ]]; then commit="checkout $commit, binary given"; fi
  python3 "$BENCH_DIR/report.py" instructions "$WORK" "$RESULTS_DIR/$stamp-instructions.json" \
    "$commit" "$BIN" "$CALL_LOG"
  log "results: $RESULTS_DIR/$stamp-instructions.json"
}

main "$@"
