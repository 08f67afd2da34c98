#!/usr/bin/env bash
# Tollgate vs nginx benchmark: see bench/README.md.
#
#   bash bench/run.sh
#
# Environment knobs (defaults in brackets):
#   BENCH_THREADS [2]  BENCH_CONNS [64]  BENCH_DURATION [10] (seconds)  BENCH_ROUNDS [3]
#   BENCH_WARMUP [2]            seconds of unmeasured wrk warm-up per target
#   BENCH_STARTUP_RUNS [5]      start-up-to-ready repetitions
#   BENCH_LOADGEN_THREADS [1]   tokio worker threads of the fixed-rate load generator
#   BENCH_JOBS [2]              cargo -j
#   BENCH_SELFTEST [0]          1 = no tollgate at all: a second nginx proxy stands in
#                               for it (exercises the whole script; results are
#                               written as *-selftest files and README.md is untouched)
#   BENCH_RESULTS_DIR [bench/results]
#   BENCH_KEEP_TMP [0]          1 = keep the temp dir (configs, logs, raw outputs)
#   BENCH_TOLLGATE_BIN          use this tollgate binary instead of building one
#   BENCH_MODE [plain]          plain = tollgate proxies a keyless service;
#                               access = every tollgate request carries an API key
#                               and passes key auth, a subscription check and a
#                               rate limit, with BENCH_ACCESS_APPS apps and
#                               BENCH_ACCESS_APPS x BENCH_ACCESS_KEYS_PER_APP keys loaded
#   BENCH_ACCESS_APPS [10000]  BENCH_ACCESS_KEYS_PER_APP [10]
#   BENCH_PRICE [unset]         access mode only: the plan charges this price
#                               per request (like 0.000001) from the bench
#                               team's wallet (granted 1000000 first), so every
#                               tollgate request also reserves, settles and
#                               queues a ledger charge
#   BENCH_CALL_LOG [on]         off = tollgate stores no call log rows
#                               (calls.log: false; rollups, metrics and alerts
#                               still count every call); results get -calllog-off
#   CARGO_TARGET_DIR [$HOME/.cache/tollgate-target]
#
# Everything listens on 127.0.0.1 only; no traffic leaves the machine.
set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$BENCH_DIR/.." && pwd)"

THREADS="${BENCH_THREADS:-2}"
CONNS="${BENCH_CONNS:-64}"
DURATION="${BENCH_DURATION:-10}"
ROUNDS="${BENCH_ROUNDS:-3}"
WARMUP="${BENCH_WARMUP:-2}"
STARTUP_RUNS="${BENCH_STARTUP_RUNS:-5}"
LOADGEN_THREADS="${BENCH_LOADGEN_THREADS:-1}"
JOBS="${BENCH_JOBS:-2}"
SELFTEST="${BENCH_SELFTEST:-0}"
RESULTS_DIR="${BENCH_RESULTS_DIR:-$BENCH_DIR/results}"
KEEP_TMP="${BENCH_KEEP_TMP:-0}"
MODE="${BENCH_MODE:-plain}"
ACCESS_APPS="${BENCH_ACCESS_APPS:-10000}"
PRICE="${BENCH_PRICE:-}"
CALL_LOG="${BENCH_CALL_LOG:-on}"
ACCESS_KEYS_PER_APP="${BENCH_ACCESS_KEYS_PER_APP:-10}"
CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/tollgate-target}"
[[ "$CARGO_TARGET_DIR" == /* ]] || CARGO_TARGET_DIR="$PWD/$CARGO_TARGET_DIR"
export CARGO_TARGET_DIR

# tollgate reads every TOLLGATE_* variable as configuration (and rejects unknown
# ones): only the ones this script sets may reach it.
for v in $(compgen -e); do
  if [[ "$v" == TOLLGATE_* ]]; then
    unset "$v"
  fi
done

HOST=127.0.0.1
UPSTREAM_PORT=18001
NGINX_PORT=18002
TG_PORT=18080
TG_ADMIN_PORT=19080
STARTUP_PORT=18081
STARTUP_ADMIN_PORT=19081
ADMIN_TOKEN=bench-token
UPSTREAM_BODY='{"ok":true,"message":"hello from upstream"}'

NGINX_URL="http://$HOST:$NGINX_PORT/bench/hello"
WRK_SCRIPT="$BENCH_DIR/wrk-report.lua"
AUTH_HEADER=""
SEED_RELOAD_MS=""
TG_URL="http://$HOST:$TG_PORT/bench/hello"

LOG_TAG=bench
# shellcheck source=bench/lib.sh
source "$BENCH_DIR/lib.sh"

[[ "$MODE" == plain || "$MODE" == access ]] || die "BENCH_MODE must be plain or access, got '$MODE'"
[[ "$CALL_LOG" == on || "$CALL_LOG" == off ]] || die "BENCH_CALL_LOG must be on or off, got '$CALL_LOG'"
if [[ "$MODE" == access && "${BENCH_SELFTEST:-0}" == 1 ]]; then
  die "BENCH_MODE=access needs tollgate (not the self-test)"
fi
for v in THREADS CONNS DURATION ROUNDS WARMUP STARTUP_RUNS LOADGEN_THREADS JOBS ACCESS_APPS ACCESS_KEYS_PER_APP; do
  [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || die "BENCH_$v must be a positive integer, got '${!v}'"
done
((CONNS >= THREADS)) || die "BENCH_CONNS ($CONNS) must be >= BENCH_THREADS ($THREADS)"

# ------------------------------------------------------------------ build ---
build() {
  cd "$REPO_DIR"
  BIN=""
  if [[ "$SELFTEST" == 1 ]]; then
    log "SELFTEST: not building tollgate; a second nginx proxy stands in for it"
  else
    build_tollgate
  fi
  build_loadgen
}

# --------------------------------------------------------------- tollgate ---
tollgate_env() { # DATA_DIR GATEWAY_PORT ADMIN_PORT: prints env assignments
  echo "TOLLGATE_ADMIN_TOKEN=$ADMIN_TOKEN"
  echo "TOLLGATE_DATA_DIR=$1"
  echo "TOLLGATE_GATEWAY__LISTEN=$HOST:$2"
  echo "TOLLGATE_ADMIN__LISTEN=$HOST:$3"
  echo "TOLLGATE_LOG__LEVEL=warn"
  if [[ "$CALL_LOG" == off ]]; then
    echo "TOLLGATE_CALLS__LOG=false"
  fi
}

start_tollgate() {
  if [[ "$SELFTEST" == 1 ]]; then
    write_proxy_conf tollgate-standin "$TG_PORT" ready >"$WORK/tollgate-standin.conf"
    start_nginx tollgate-standin
    TG_PID=$LAST_PID
    TG_LOG="$WORK/tollgate-standin-error.log"
  else
    mkdir -p "$WORK/tg"
    TG_LOG="$WORK/tollgate.log"
    local -a envs
    mapfile -t envs < <(tollgate_env "$WORK/tg" "$TG_PORT" "$TG_ADMIN_PORT")
    env "${envs[@]}" "$BIN" serve >"$TG_LOG" 2>&1 &
    TG_PID=$!
    PIDS+=("$TG_PID")
  fi
  local t0
  t0=$(date +%s%N)
  if ! wait_http "http://$HOST:$TG_PORT/_tollgate/ready" 15 "$TG_PID"; then
    show_log "$TG_LOG"
    if ! kill -0 "$TG_PID" 2>/dev/null; then
      die "tollgate exited right after 'tollgate serve' (see log above)"
    fi
    die "tollgate did not answer 200 on http://$HOST:$TG_PORT/_tollgate/ready within 15 s"
  fi
  log "tollgate ready after $((($(date +%s%N) - t0) / 1000000)) ms (curl-polled)"

  if [[ "$SELFTEST" != 1 ]]; then
    log "applying bench/tollgate-bench.yaml"
    if ! TOLLGATE_ADMIN_TOKEN="$ADMIN_TOKEN" "$BIN" apply -f "$BENCH_DIR/tollgate-bench.yaml" \
      --admin-url "http://$HOST:$TG_ADMIN_PORT" >"$WORK/apply.log" 2>&1; then
      show_log "$WORK/apply.log"
      show_log "$TG_LOG"
      die "'tollgate apply -f bench/tollgate-bench.yaml --admin-url http://$HOST:$TG_ADMIN_PORT' failed"
    fi
    if [[ "$MODE" == access ]]; then
      setup_access
    fi
  fi
  if ! wait_http "$TG_URL" 5 "$TG_PID" "$AUTH_HEADER"; then
    show_log "$TG_LOG"
    curl -sS -i --max-time 2 "$TG_URL" >&2 || true
    die "tollgate does not answer 200 on $TG_URL within 5 s of the apply"
  fi
}

# Access mode: the bench service takes keys; a team, a plan with rate limits
# (high enough never to refuse) and ACCESS_APPS apps with their keys and
# active subscriptions are loaded. Sets AUTH_HEADER (one of the keys).
setup_access() {
  log "access mode: team, plan, $ACCESS_APPS apps x $ACCESS_KEYS_PER_APP keys"
  admin_call POST /api/v1/teams '{"slug":"bench"}' >/dev/null || die "cannot create the bench team"
  local service plan service_id plan_id seeded t0
  service=$(admin_call PATCH /api/v1/services/bench '{"auth":{"anonymous":false},"visibility":"catalog"}') ||
    die "cannot require keys on the bench service"
  local price_field=""
  if [[ -n "$PRICE" ]]; then
    price_field=",\"price_per_request\":\"$PRICE\""
    admin_call POST /api/v1/teams/bench/wallet/grants '{"amount":"1000000","reason":"bench"}' >/dev/null ||
      die "cannot grant the bench team money"
  fi
  plan=$(admin_call POST /api/v1/services/bench/plans \
    "{\"slug\":\"bench-plan\",\"rate_limits\":[{\"requests\":4000000000,\"per\":\"hour\"},{\"requests\":100000000,\"per\":\"second\"}]$price_field}") ||
    die "cannot create the bench plan"
  service_id=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])' <<<"$service")
  plan_id=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])' <<<"$plan")
  t0=$(date +%s%N)
  seeded=$(python3 "$BENCH_DIR/seed_access.py" --db "$WORK/tg/tollgate.db" --apps "$ACCESS_APPS" \
    --keys-per-app "$ACCESS_KEYS_PER_APP" --service-id "$service_id" --plan-id "$plan_id" --team bench \
    --keys-out "$WORK/keys.txt") || die "seeding the access data failed"
  log "seeded: $seeded"
  AUTH_HEADER="Bearer $(head -n 1 "$WORK/keys.txt")"
  local t1 i
  t1=$(date +%s%N)
  for i in $(seq 600); do
    if [[ "$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: $AUTH_HEADER" "$TG_URL")" == 200 ]]; then
      break
    fi
    sleep 0.05
  done
  [[ "$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: $AUTH_HEADER" "$TG_URL")" == 200 ]] ||
    die "the seeded key is not accepted 30 s after seeding"
  SEED_RELOAD_MS=$((($(date +%s%N) - t1) / 1000000))
  log "gateway accepts the seeded keys ${SEED_RELOAD_MS} ms after the seed commit (seeding took $(((t1 - t0) / 1000000)) ms)"
  # Both targets get the same header (nginx passes it through unused).
  {
    printf 'wrk.headers["Authorization"] = "%s"\n' "$AUTH_HEADER"
    cat "$BENCH_DIR/wrk-report.lua"
  } >"$WORK/wrk-access.lua"
  WRK_SCRIPT="$WORK/wrk-access.lua"
}

check_body() { # NAME URL
  local body
  body=$(curl -fsS --max-time 2 ${AUTH_HEADER:+-H "Authorization: $AUTH_HEADER"} "$2") || die "$1: GET $2 failed"
  [[ "$body" == "$UPSTREAM_BODY" ]] || die "$1: GET $2 returned '$body', expected '$UPSTREAM_BODY'"
}

# --------------------------------------------------------------- start-up ---
measure_startup() {
  log "start-up to ready: $STARTUP_RUNS runs on $HOST:$STARTUP_PORT"
  : >"$RAW/startup.jsonl"
  local i
  for i in $(seq "$STARTUP_RUNS"); do
    local -a cmd envs=()
    if [[ "$SELFTEST" == 1 ]]; then
      write_proxy_conf "startup-$i" "$STARTUP_PORT" ready >"$WORK/startup-$i.conf"
      cmd=("$NGINX" -p "$WORK/" -c "$WORK/startup-$i.conf" -e "$WORK/startup-$i-error.log")
    else
      mkdir -p "$WORK/startup-$i"
      mapfile -t envs < <(tollgate_env "$WORK/startup-$i" "$STARTUP_PORT" "$STARTUP_ADMIN_PORT")
      cmd=("$BIN" serve)
    fi
    if ! env "${envs[@]}" "$LOADGEN" ready-time --url "http://$HOST:$STARTUP_PORT/_tollgate/ready" \
      --timeout-ms 10000 -- "${cmd[@]}" >>"$RAW/startup.jsonl" 2>"$WORK/startup-$i.log"; then
      show_log "$WORK/startup-$i.log"
      die "start-up run $i: the binary did not become ready (see above)"
    fi
    log "  run $i: $(tail -n 1 "$RAW/startup.jsonl")"
    for _ in $(seq 100); do port_busy "$STARTUP_PORT" || break; sleep 0.05; done
  done
}

# -------------------------------------------------------------------- load ---
wrk_run() { # URL SECONDS OUTFILE
  wrk -t"$THREADS" -c"$CONNS" -d"${2}s" --latency -s "$WRK_SCRIPT" "$1" >"$3" 2>&1 || {
    cat "$3" >&2
    die "wrk against $1 failed"
  }
  grep -q '^WRK_REPORT ' "$3" || {
    cat "$3" >&2
    die "wrk output has no WRK_REPORT line ($3)"
  }
}

fixed_run() { # URL RATE OUTFILE
  "$LOADGEN" --url "$1" --rate "$2" --duration-s "$DURATION" --warmup-s 1 \
    --connections "$CONNS" --threads "$LOADGEN_THREADS" ${AUTH_HEADER:+--authorization "$AUTH_HEADER"} \
    >"$3" 2>"$3.stderr" || {
    cat "$3.stderr" >&2
    die "loadgen against $1 failed"
  }
}

summary_line() { # FILE (wrk output)
  python3 "$BENCH_DIR/report.py" wrk-line "$1"
}

# ------------------------------------------------------------------- main ---
main() {
  ensure_tools
  build

  local p
  for p in $UPSTREAM_PORT $NGINX_PORT $TG_PORT $TG_ADMIN_PORT $STARTUP_PORT $STARTUP_ADMIN_PORT; do
    if port_busy "$p"; then die "port $HOST:$p is already in use (another benchmark still running?)"; fi
  done

  WORK="$(mktemp -d "${TMPDIR:-/tmp}/tollgate-bench.XXXXXX")"
  RAW="$WORK/raw"
  mkdir -p "$RAW"
  log "temp dir: $WORK"
  nginx_setup

  local started_utc stamp
  started_utc="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  stamp="$(date -u +%Y%m%dT%H%M%SZ)"

  write_upstream_conf >"$WORK/upstream.conf"
  write_proxy_conf nginx-proxy "$NGINX_PORT" >"$WORK/nginx-proxy.conf"
  start_nginx upstream
  UPSTREAM_PID=$LAST_PID
  wait_http "http://$HOST:$UPSTREAM_PORT/hello" 10 "$UPSTREAM_PID" || {
    show_log "$WORK/upstream-error.log"
    die "nginx upstream did not start"
  }
  start_nginx nginx-proxy
  NGINX_PID=$LAST_PID
  wait_http "$NGINX_URL" 10 "$NGINX_PID" || {
    show_log "$WORK/nginx-proxy-error.log"
    die "nginx proxy did not start"
  }
  check_body upstream "http://$HOST:$UPSTREAM_PORT/hello"
  check_body nginx "$NGINX_URL"
  log "nginx upstream (pid $UPSTREAM_PID) and proxy (pid $NGINX_PID) are up"

  local busy
  busy=$(cpu_busy_pct)
  if ((busy > 10)); then
    log "WARNING: the machine is already ${busy}% busy before any load (builds, tests?): figures will be noisy"
  fi

  measure_startup

  start_tollgate
  check_body tollgate "$TG_URL"
  sleep 1
  local tg_rss_idle nginx_rss_idle
  tg_rss_idle=$(rss_kb "$TG_PID")
  nginx_rss_idle=$(rss_kb "$NGINX_PID")
  log "idle RSS: tollgate ${tg_rss_idle} kB, nginx proxy ${nginx_rss_idle} kB"

  log "peak throughput: wrk -t$THREADS -c$CONNS -d${DURATION}s, $ROUNDS rounds alternating nginx/tollgate"
  wrk_run "$NGINX_URL" "$WARMUP" "$RAW/warmup-nginx.txt"
  wrk_run "$TG_URL" "$WARMUP" "$RAW/warmup-tollgate.txt"
  local r
  for r in $(seq "$ROUNDS"); do
    sleep 1
    local before
    before=$(cpu_ticks "$NGINX_PID")
    wrk_run "$NGINX_URL" "$DURATION" "$RAW/peak-nginx-$r.txt"
    echo "$before $(cpu_ticks "$NGINX_PID")" >"$RAW/cpu-nginx-$r.txt"
    log "  round $r nginx:    $(summary_line "$RAW/peak-nginx-$r.txt")"
    sleep 1
    before=$(cpu_ticks "$TG_PID")
    wrk_run "$TG_URL" "$DURATION" "$RAW/peak-tollgate-$r.txt"
    echo "$before $(cpu_ticks "$TG_PID")" >"$RAW/cpu-tollgate-$r.txt"
    log "  round $r tollgate: $(summary_line "$RAW/peak-tollgate-$r.txt")"
  done

  local half
  half=$(python3 "$BENCH_DIR/report.py" half-rate "$RAW") || die "could not compute nginx's best req/s"
  log "fixed rate: $half req/s (half of nginx's best), ${DURATION}s + 1s warm-up, $ROUNDS rounds"
  for r in $(seq "$ROUNDS"); do
    sleep 1
    fixed_run "$NGINX_URL" "$half" "$RAW/fixed-nginx-$r.json"
    log "  round $r nginx:    $(cat "$RAW/fixed-nginx-$r.json")"
    sleep 1
    fixed_run "$TG_URL" "$half" "$RAW/fixed-tollgate-$r.json"
    log "  round $r tollgate: $(cat "$RAW/fixed-tollgate-$r.json")"
  done

  sleep 1
  local tg_rss_after nginx_rss_after tg_hwm
  tg_rss_after=$(rss_kb "$TG_PID")
  nginx_rss_after=$(rss_kb "$NGINX_PID")
  tg_hwm=$(hwm_kb "$TG_PID")
  log "RSS after load: tollgate ${tg_rss_after} kB (peak ${tg_hwm} kB), nginx proxy ${nginx_rss_after} kB"
  kill -0 "$TG_PID" 2>/dev/null || die "tollgate died during the benchmark"

  local commit
  commit="$(git -C "$REPO_DIR" rev-parse --short HEAD 2>/dev/null || echo unknown)"
  if [[ -n "$(git -C "$REPO_DIR" status --porcelain --untracked-files=no 2>/dev/null || true)" ]]; then
    commit="$commit-dirty"
  fi
  {
    echo "started_utc=$started_utc"
    echo "finished_utc=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "stamp=$stamp"
    echo "selftest=$SELFTEST"
    echo "mode=$MODE"
    echo "call_log=$CALL_LOG"
    if [[ "$MODE" == access ]]; then
      echo "apps_loaded=$ACCESS_APPS"
      echo "keys_loaded=$((ACCESS_APPS * ACCESS_KEYS_PER_APP))"
      echo "seed_reload_ms=$SEED_RELOAD_MS"
      echo "rss_tollgate_keys_loaded_kb=$tg_rss_idle"
      if [[ -n "$PRICE" ]]; then
        echo "price_per_request=$PRICE"
      fi
    fi
    echo "nproc=$(nproc)"
    echo "kernel=$(uname -r)"
    echo "cpu=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)"
    echo "mem_total_kb=$(awk '/^MemTotal:/ {print $2}' /proc/meminfo)"
    echo "os=$(awk -F= '$1 == "PRETTY_NAME" {gsub(/"/, "", $2); print $2}' /etc/os-release 2>/dev/null || true)"
    echo "tollgate_commit=$commit"
    echo "tollgate_bin=${BIN:-nginx stand-in (selftest)}"
    echo "nginx_version=$("$NGINX" -v 2>&1 | sed 's/^nginx version: //')"
    echo "wrk_version=$(wrk -v 2>&1 | head -n 1 | awk '{print $2}')"
    echo "rustc_version=$(rustc --version 2>/dev/null || echo unknown)"
    echo "threads=$THREADS"
    echo "connections=$CONNS"
    echo "duration_s=$DURATION"
    echo "rounds=$ROUNDS"
    echo "warmup_s=$WARMUP"
    echo "loadgen_threads=$LOADGEN_THREADS"
    echo "half_rate=$half"
    echo "cpu_busy_before_pct=$busy"
    echo "rss_tollgate_idle_kb=$tg_rss_idle"
    echo "rss_tollgate_after_kb=$tg_rss_after"
    echo "rss_tollgate_hwm_kb=$tg_hwm"
    echo "rss_nginx_proxy_idle_kb=$nginx_rss_idle"
    echo "rss_nginx_proxy_after_kb=$nginx_rss_after"
  } >"$RAW/meta.env"

  mkdir -p "$RESULTS_DIR"
  local readme_args=()
  # Only a real run into bench/results refreshes the README's "Latest results".
  if [[ "$SELFTEST" != 1 && "$(cd "$RESULTS_DIR" 2>/dev/null && pwd)" == "$BENCH_DIR/results" ]]; then
    readme_args=(--readme "$BENCH_DIR/README.md")
  fi
  python3 "$BENCH_DIR/report.py" build --raw "$RAW" --out-dir "$RESULTS_DIR" "${readme_args[@]}"
}

main "$@"
