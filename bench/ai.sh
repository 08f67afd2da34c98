#!/usr/bin/env bash
# AI scenario: Tollgate vs LiteLLM proxy on POST /v1/chat/completions, streamed
# and not, in front of a fake provider (nginx) that answers at once. See the
# "AI scenario" section of bench/README.md.
#
#   bash bench/ai.sh
#
# Environment knobs (defaults in brackets):
#   BENCH_THREADS [2]  BENCH_CONNS [32]  BENCH_DURATION [10] (seconds of each wrk run)
#   BENCH_ROUNDS [3]  BENCH_FIXED_DURATION [20] (seconds of each fixed-rate run)
#   BENCH_WARMUP [3]            seconds of unmeasured wrk warm-up per target and variant
#   BENCH_AI_RATE               fixed rate (req/s) of the overhead runs; default half of
#                               LiteLLM's lowest peak (median over rounds)
#   BENCH_AI_HIGH_RATE          fixed rate of the extra tollgate-only runs; default a
#                               quarter of tollgate's lowest peak; 0 = skip them
#   BENCH_LOADGEN_THREADS [1]   tokio worker threads of the fixed-rate load generator
#   BENCH_LITELLM_WORKERS [nproc]  litellm --num_workers (uvicorn worker processes)
#   BENCH_LITELLM_VENV [$HOME/.cache/tollgate-bench-litellm-1.74.9]
#   BENCH_JOBS [2]              cargo -j
#   BENCH_RESULTS_DIR [bench/results]
#   BENCH_KEEP_TMP [0]          1 = keep the temp dir (configs, logs, raw outputs)
#   BENCH_TOLLGATE_BIN          use this tollgate binary instead of building one
#   BENCH_TOLLGATE_COMMIT       with BENCH_TOLLGATE_BIN: the commit it was built from
#                               (for the report; default: "prebuilt")
#   CARGO_TARGET_DIR [$HOME/.cache/tollgate-target]
#
# LiteLLM is installed from PyPI into its own venv, pinned to exactly
# litellm[proxy]==1.74.9 (no other version is accepted).
# Everything listens on 127.0.0.1 only; no traffic leaves the machine.
set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$BENCH_DIR/.." && pwd)"

THREADS="${BENCH_THREADS:-2}"
CONNS="${BENCH_CONNS:-32}"
DURATION="${BENCH_DURATION:-10}"
FIXED_DURATION="${BENCH_FIXED_DURATION:-20}"
ROUNDS="${BENCH_ROUNDS:-3}"
WARMUP="${BENCH_WARMUP:-3}"
RATE="${BENCH_AI_RATE:-}"
HIGH_RATE="${BENCH_AI_HIGH_RATE:-}"
LOADGEN_THREADS="${BENCH_LOADGEN_THREADS:-1}"
LITELLM_WORKERS="${BENCH_LITELLM_WORKERS:-$(nproc)}"
JOBS="${BENCH_JOBS:-2}"
RESULTS_DIR="${BENCH_RESULTS_DIR:-$BENCH_DIR/results}"
KEEP_TMP="${BENCH_KEEP_TMP:-0}"
CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/tollgate-target}"
[[ "$CARGO_TARGET_DIR" == /* ]] || CARGO_TARGET_DIR="$PWD/$CARGO_TARGET_DIR"
export CARGO_TARGET_DIR

# The one LiteLLM release this benchmark runs (pinned: a compromised release
# must never be pulled in by a loose specifier).
LITELLM_VERSION=1.74.9
LITELLM_VENV="${BENCH_LITELLM_VENV:-$HOME/.cache/tollgate-bench-litellm-$LITELLM_VERSION}"

# tollgate reads every TOLLGATE_* variable as configuration (and rejects unknown
# ones): only the ones this script sets may reach it.
for v in $(compgen -e); do
  if [[ "$v" == TOLLGATE_* ]]; then
    unset "$v"
  fi
done

HOST=127.0.0.1
FAKE_PORT=18101
TG_PORT=18180
TG_ADMIN_PORT=19180
LITELLM_PORT=4000
ADMIN_TOKEN=bench-ai-token
VARIANTS=(plain sse)
TARGETS=(direct tollgate litellm)

FAKE_URL="http://$HOST:$FAKE_PORT"
TG_URL="http://$HOST:$TG_PORT/v1/chat/completions"
LITELLM_URL="http://$HOST:$LITELLM_PORT/v1/chat/completions"

LOG_TAG=bench-ai
# shellcheck source=bench/lib.sh
source "$BENCH_DIR/lib.sh"

for v in THREADS CONNS DURATION FIXED_DURATION ROUNDS WARMUP LOADGEN_THREADS LITELLM_WORKERS JOBS; do
  [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || die "BENCH_$v must be a positive integer, got '${!v}'"
done
[[ -z "$RATE" || "$RATE" =~ ^[1-9][0-9]*$ ]] || die "BENCH_AI_RATE must be a positive integer, got '$RATE'"
[[ -z "$HIGH_RATE" || "$HIGH_RATE" =~ ^[0-9]+$ ]] || die "BENCH_AI_HIGH_RATE must be an integer, got '$HIGH_RATE'"
((CONNS >= THREADS)) || die "BENCH_CONNS ($CONNS) must be >= BENCH_THREADS ($THREADS)"

litellm_installed_version() {
  "$LITELLM_VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("litellm"))' 2>/dev/null || true
}

ensure_litellm() {
  [[ "$LITELLM_VERSION" == 1.74.9 ]] || die "this benchmark runs litellm 1.74.9 only"
  local have
  have="$(litellm_installed_version)"
  if [[ "$have" != "$LITELLM_VERSION" || ! -x "$LITELLM_VENV/bin/litellm" ]]; then
    if [[ -n "$have" ]]; then
      die "$LITELLM_VENV holds litellm $have, not $LITELLM_VERSION: remove that venv (this script never upgrades or downgrades it)"
    fi
    log "installing litellm[proxy]==$LITELLM_VERSION into $LITELLM_VENV (pip, PyPI)"
    python3 -m venv "$LITELLM_VENV" || die "python3 -m venv $LITELLM_VENV failed (apt-get install python3-venv?)"
    "$LITELLM_VENV/bin/pip" install --disable-pip-version-check --quiet "litellm[proxy]==$LITELLM_VERSION" ||
      die "pip install 'litellm[proxy]==$LITELLM_VERSION' failed"
    have="$(litellm_installed_version)"
    [[ "$have" == "$LITELLM_VERSION" ]] || die "pip installed litellm '$have', expected $LITELLM_VERSION"
  fi
  log "LiteLLM $have in $LITELLM_VENV"
}

# ------------------------------------------------------------------ build ---
build() {
  cd "$REPO_DIR"
  build_tollgate
  build_loadgen
}

# ------------------------------------------------------- the fake provider ---
write_fake_conf() {
  nginx_head fake
  cat <<EOF
  server {
    listen $HOST:$FAKE_PORT backlog=4096;
$(cat "$WORK/fake-locations.conf")
  }
}
EOF
}

start_fake() {
  write_fake_conf >"$WORK/fake.conf"
  "$NGINX" -t -q -p "$WORK/" -c "$WORK/fake.conf" -e "$WORK/fake-error.log" >"$WORK/fake.out" 2>&1 || {
    show_log "$WORK/fake.out"
    die "the fake provider's nginx config is invalid"
  }
  "$NGINX" -p "$WORK/" -c "$WORK/fake.conf" -e "$WORK/fake-error.log" >>"$WORK/fake.out" 2>&1 &
  FAKE_PID=$!
  PIDS+=("$FAKE_PID")
  local deadline=$((SECONDS + 10))
  until curl -fsS -o /dev/null -X POST --data '{}' "$FAKE_URL/plain/v1/chat/completions" 2>/dev/null; do
    kill -0 "$FAKE_PID" 2>/dev/null || { show_log "$WORK/fake-error.log"; die "the fake provider exited"; }
    ((SECONDS < deadline)) || die "the fake provider did not answer within 10 s"
    sleep 0.05
  done
}

# --------------------------------------------------------------- tollgate ---
start_tollgate() {
  mkdir -p "$WORK/tg"
  TG_LOG="$WORK/tollgate.log"
  env TOLLGATE_ADMIN_TOKEN="$ADMIN_TOKEN" TOLLGATE_DATA_DIR="$WORK/tg" \
    TOLLGATE_GATEWAY__LISTEN="$HOST:$TG_PORT" TOLLGATE_ADMIN__LISTEN="$HOST:$TG_ADMIN_PORT" \
    TOLLGATE_LOG__LEVEL=warn "$BIN" serve >"$TG_LOG" 2>&1 &
  TG_PID=$!
  PIDS+=("$TG_PID")
  wait_http "http://$HOST:$TG_PORT/_tollgate/ready" 15 "$TG_PID" || {
    show_log "$TG_LOG"
    die "tollgate did not become ready on $HOST:$TG_PORT"
  }
}

# A team owning an AI service over two openai_compatible providers (one per
# fake base path), a plan priced per token, an app with a key subscribed to
# it, and money in the app team's wallet. Sets TG_KEY.
configure_tollgate() {
  log "configuring tollgate through the admin API"
  admin_call POST /api/v1/teams '{"slug":"llmops","name":"LLM ops"}' >/dev/null
  admin_call POST /api/v1/teams '{"slug":"bench","name":"Bench"}' >/dev/null
  local v models=()
  for v in "${VARIANTS[@]}"; do
    admin_call POST /api/v1/providers \
      "{\"slug\":\"fake-$v\",\"kind\":\"openai_compatible\",\"base_url\":\"$FAKE_URL/$v/v1\"}" >/dev/null
    admin_call POST "/api/v1/providers/fake-$v/keys" "{\"key\":\"sk-bench-fake-$v\"}" >/dev/null
    admin_call PUT "/api/v1/providers/fake-$v/models/gpt-bench" \
      '{"input_per_million":"1","output_per_million":"2","cached_input_per_million":"0.5","context_window":128000,"max_output_tokens":4096,"modalities":{"input":["text"],"output":["text"]}}' >/dev/null
    models+=("\"fake-$v/gpt-bench\"")
  done
  local list
  list=$(IFS=,; echo "${models[*]}")
  admin_call POST /api/v1/services \
    "{\"slug\":\"llm\",\"team\":\"llmops\",\"kind\":\"ai\",\"base_path\":\"/llm\",\"visibility\":\"catalog\",\"ai\":{\"models\":[$list]}}" >/dev/null
  admin_call POST /api/v1/services/llm/plans \
    '{"slug":"tokens","token_prices":{"*":{"input_per_million":"0.5","output_per_million":"1.5"}}}' >/dev/null
  admin_call POST /api/v1/services/llm/publish '{}' >/dev/null
  admin_call POST /api/v1/apps '{"slug":"bench-bot","team":"bench"}' >/dev/null
  TG_KEY=$(admin_call POST /api/v1/apps/bench-bot/keys '{"name":"bench"}' | json_field key)
  admin_call POST /api/v1/subscriptions '{"app":"bench-bot","service":"llm","plan":"tokens"}' >/dev/null
  admin_call POST /api/v1/teams/bench/wallet/grants \
    "{\"amount\":\"1000000\",\"reason\":\"AI benchmark\",\"idempotency_key\":\"bench-ai-$STAMP\"}" >/dev/null

  # Served once /v1/models lists both models and the grant reached the gateway.
  local deadline=$((SECONDS + 20)) listed
  while :; do
    listed=$(curl -sS --max-time 2 -H "Authorization: Bearer $TG_KEY" "http://$HOST:$TG_PORT/v1/models" 2>/dev/null |
      python3 -c 'import json,sys
try: print(" ".join(sorted(m["id"] for m in json.load(sys.stdin)["data"])))
except Exception: print("")' || true)
    [[ "$listed" == "fake-plain/gpt-bench fake-sse/gpt-bench" ]] && break
    ((SECONDS < deadline)) || die "GET /v1/models does not list the bench models 20 s after configuration (got '$listed')"
    sleep 0.1
  done
  log "GET /v1/models lists: $listed"
  deadline=$((SECONDS + 20))
  until [[ "$(curl -s -o /dev/null -w '%{http_code}' -X POST -H "Authorization: Bearer $TG_KEY" \
    -H 'content-type: application/json' --data @"$WORK/request-plain.json" "$TG_URL")" == 200 ]]; do
    ((SECONDS < deadline)) || {
      curl -sS -i -X POST -H "Authorization: Bearer $TG_KEY" -H 'content-type: application/json' \
        --data @"$WORK/request-plain.json" "$TG_URL" >&2 || true
      show_log "$TG_LOG"
      die "tollgate does not answer 200 on $TG_URL 20 s after configuration"
    }
    sleep 0.2
  done
}

# ---------------------------------------------------------------- litellm ---
start_litellm() {
  cat >"$WORK/litellm-log.yaml" <<'EOF'
version: 1
disable_existing_loggers: false
formatters:
  plain: {format: "%(levelname)s %(name)s: %(message)s"}
handlers:
  stderr: {class: logging.StreamHandler, formatter: plain, stream: "ext://sys.stderr"}
root: {level: WARNING, handlers: [stderr]}
loggers:
  uvicorn: {level: WARNING}
  uvicorn.error: {level: WARNING}
  uvicorn.access: {level: WARNING, handlers: [], propagate: false}
  httpx: {level: WARNING}
EOF
  LITELLM_LOG_FILE="$WORK/litellm.log"
  # No database, no master key (LiteLLM's lightest set-up), logging at
  # warnings, the local model cost map (no download); run from the temp dir
  # so that no .env of the repo is read.
  (
    cd "$WORK"
    exec env -u DATABASE_URL -u DIRECT_URL -u REDIS_HOST -u REDIS_URL -u LITELLM_MASTER_KEY \
      LITELLM_LOCAL_MODEL_COST_MAP=True LITELLM_LOG=ERROR LITELLM_MODE=PRODUCTION \
      "$LITELLM_VENV/bin/litellm" --config "$WORK/litellm.yaml" --host "$HOST" --port "$LITELLM_PORT" \
      --num_workers "$LITELLM_WORKERS" --telemetry False --log_config "$WORK/litellm-log.yaml"
  ) >"$LITELLM_LOG_FILE" 2>&1 &
  LITELLM_PID=$!
  PIDS+=("$LITELLM_PID")
  wait_http "http://$HOST:$LITELLM_PORT/health/liveliness" 120 "$LITELLM_PID" || {
    show_log "$LITELLM_LOG_FILE"
    die "LiteLLM did not answer on $HOST:$LITELLM_PORT within 120 s"
  }
}

# ------------------------------------------------------------------ check ---
check_path() { # TARGET VARIANT URL
  local t="$1" v="$2" url="$3" strict=()
  [[ "$t" == litellm ]] || strict=(--strict)
  curl -sS --max-time 10 -X POST -H "Authorization: Bearer $TG_KEY" -H 'content-type: application/json' \
    --data @"$WORK/request-$v.json" -D "$RAW/check-$t-$v.headers" -o "$RAW/check-$t-$v.body" "$url" ||
    die "$t $v: POST $url failed"
  if ! python3 "$BENCH_DIR/ai_report.py" check "${strict[@]}" --variant "$v" --headers "$RAW/check-$t-$v.headers" \
    --body "$RAW/check-$t-$v.body" >"$RAW/check-$t-$v.json"; then
    cat "$RAW/check-$t-$v.json" >&2
    head -c 2000 "$RAW/check-$t-$v.body" >&2
    die "$t $v: the answer from $url is not what a client of OpenAI expects"
  fi
  log "  $t $v: $(cat "$RAW/check-$t-$v.json")"
}

url_of() { # TARGET VARIANT
  case "$1" in
    direct) echo "$FAKE_URL/$2/v1/chat/completions" ;;
    tollgate) echo "$TG_URL" ;;
    litellm) echo "$LITELLM_URL" ;;
  esac
}

pid_of() {
  case "$1" in
    direct) echo "$FAKE_PID" ;;
    tollgate) echo "$TG_PID" ;;
    litellm) echo "$LITELLM_PID" ;;
  esac
}

# -------------------------------------------------------------------- load ---
wrk_run() { # URL VARIANT SECONDS OUTFILE
  # wrk's default 2 s timeout would count LiteLLM's slow answers as errors.
  wrk -t"$THREADS" -c"$CONNS" -d"${3}s" --timeout 10s --latency -s "$WORK/wrk-run-$2.lua" "$1" >"$4" 2>&1 || {
    cat "$4" >&2
    die "wrk against $1 failed"
  }
  grep -q '^WRK_REPORT ' "$4" || {
    cat "$4" >&2
    die "wrk output has no WRK_REPORT line ($4)"
  }
}

fixed_run() { # URL VARIANT RATE OUTFILE
  "$LOADGEN" --url "$1" --rate "$3" --duration-s "$FIXED_DURATION" --warmup-s 1 --connections "$CONNS" \
    --threads "$LOADGEN_THREADS" --timeout-ms 10000 --authorization "Bearer $TG_KEY" \
    --body-file "$WORK/request-$2.json" >"$4" 2>"$4.stderr" || {
    cat "$4.stderr" >&2
    die "loadgen against $1 failed"
  }
}

wallet() { admin_call GET /api/v1/teams/bench/wallet; }

fixed_line() { # loadgen JSON -> short summary
  python3 -c 'import json,sys; d=json.load(open(sys.argv[1]))
print("p50 %.3f ms, p99 %.3f ms, p99.9 %.3f ms, send lag p99 %.3f ms, sent %d, errors %d" % (d["p50_us"]/1e3, d["p99_us"]/1e3, d["p999_us"]/1e3, d["lag_p99_us"]/1e3, d["sent"], d["errors"]))' "$1"
}

# ------------------------------------------------------------------- main ---
main() {
  ensure_tools
  ensure_litellm
  build

  local p
  for p in $FAKE_PORT $TG_PORT $TG_ADMIN_PORT $LITELLM_PORT; do
    if port_busy "$p"; then die "port $HOST:$p is already in use (another benchmark still running?)"; fi
  done

  WORK="$(mktemp -d "${TMPDIR:-/tmp}/tollgate-bench-ai.XXXXXX")"
  RAW="$WORK/raw"
  mkdir -p "$RAW"
  log "temp dir: $WORK"
  nginx_setup
  local started_utc
  started_utc="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  STAMP="$(date -u +%Y%m%dT%H%M%SZ)"

  python3 "$BENCH_DIR/ai_report.py" fixtures --out "$WORK" --fake-url "$FAKE_URL" || die "writing the fixtures failed"
  start_fake
  log "fake provider (nginx, pid $FAKE_PID) on $FAKE_URL/{plain,sse}/v1/chat/completions"
  start_tollgate
  configure_tollgate
  log "tollgate (pid $TG_PID) serves $TG_URL"
  start_litellm
  log "LiteLLM (pid $LITELLM_PID, $LITELLM_WORKERS worker(s)) serves $LITELLM_URL"

  local v t r
  for v in "${VARIANTS[@]}"; do
    {
      printf 'wrk.headers["Authorization"] = "Bearer %s"\n' "$TG_KEY"
      cat "$WORK/wrk-$v.lua" "$BENCH_DIR/wrk-report.lua"
    } >"$WORK/wrk-run-$v.lua"
  done

  log "checking every path answers in OpenAI's wire format"
  for t in "${TARGETS[@]}"; do
    for v in "${VARIANTS[@]}"; do
      check_path "$t" "$v" "$(url_of "$t" "$v")"
    done
  done

  local busy
  busy=$(cpu_busy_pct)
  if ((busy > 10)); then
    log "WARNING: the machine is already ${busy}% busy before any load (builds, tests?): figures will be noisy"
  fi
  wallet >"$RAW/wallet-before.json"
  local tg_rss_idle litellm_rss_idle
  tg_rss_idle=$(rss_kb "$TG_PID")
  litellm_rss_idle=$(rss_kb "$LITELLM_PID")

  log "warm-up: wrk ${WARMUP}s per target and variant"
  for v in "${VARIANTS[@]}"; do
    for t in "${TARGETS[@]}"; do
      wrk_run "$(url_of "$t" "$v")" "$v" "$WARMUP" "$RAW/warmup-$t-$v.txt"
    done
  done

  log "peak throughput: wrk -t$THREADS -c$CONNS -d${DURATION}s, $ROUNDS rounds"
  for r in $(seq "$ROUNDS"); do
    for v in "${VARIANTS[@]}"; do
      for t in "${TARGETS[@]}"; do
        wait_quiet >"$RAW/quiet-peak-$t-$v-$r.txt"
        local before pid
        pid=$(pid_of "$t")
        before=$(cpu_ticks "$pid")
        wrk_run "$(url_of "$t" "$v")" "$v" "$DURATION" "$RAW/peak-$t-$v-$r.txt"
        echo "$before $(cpu_ticks "$pid")" >"$RAW/cpu-$t-$v-$r.txt"
        log "  round $r $v $t: $(python3 "$BENCH_DIR/ai_report.py" wrk-line "$RAW/peak-$t-$v-$r.txt")"
      done
    done
  done

  if [[ -z "$RATE" ]]; then
    RATE=$(python3 "$BENCH_DIR/ai_report.py" median-rps "$RAW" litellm) || die "could not read LiteLLM's peak"
    RATE=$((RATE / 2))
    ((RATE >= 1)) || RATE=1
  fi
  if [[ -z "$HIGH_RATE" ]]; then
    HIGH_RATE=$(python3 "$BENCH_DIR/ai_report.py" median-rps "$RAW" tollgate) || die "could not read tollgate's peak"
    HIGH_RATE=$((HIGH_RATE / 4))
  fi
  log "overhead: loadgen at $RATE req/s (${FIXED_DURATION}s + 1s), direct/tollgate/LiteLLM, $ROUNDS rounds"
  for r in $(seq "$ROUNDS"); do
    for v in "${VARIANTS[@]}"; do
      for t in "${TARGETS[@]}"; do
        wait_quiet >"$RAW/quiet-fixed-$t-$v-$r.txt"
        fixed_run "$(url_of "$t" "$v")" "$v" "$RATE" "$RAW/fixed-$t-$v-$r.json"
        log "  round $r $v $t @ $RATE: $(fixed_line "$RAW/fixed-$t-$v-$r.json")"
      done
    done
  done
  if ((HIGH_RATE > 0)); then
    log "tollgate alone at $HIGH_RATE req/s (${FIXED_DURATION}s + 1s), direct/tollgate, $ROUNDS rounds"
    for r in $(seq "$ROUNDS"); do
      for v in "${VARIANTS[@]}"; do
        for t in direct tollgate; do
          wait_quiet >"$RAW/quiet-fixed-high-$t-$v-$r.txt"
          fixed_run "$(url_of "$t" "$v")" "$v" "$HIGH_RATE" "$RAW/fixed-high-$t-$v-$r.json"
          log "  round $r $v $t @ $HIGH_RATE: $(fixed_line "$RAW/fixed-high-$t-$v-$r.json")"
        done
      done
    done
  fi

  sleep 1
  wallet >"$RAW/wallet-after.json"
  kill -0 "$TG_PID" 2>/dev/null || die "tollgate died during the benchmark"
  kill -0 "$LITELLM_PID" 2>/dev/null || die "LiteLLM died during the benchmark"
  local tg_rss_after litellm_rss_after
  tg_rss_after=$(rss_kb "$TG_PID")
  litellm_rss_after=$(rss_kb "$LITELLM_PID")
  cp "$WORK/litellm.yaml" "$RAW/litellm.yaml"
  # Anything LiteLLM or tollgate logged at warning level or above.
  grep -c . "$LITELLM_LOG_FILE" >"$RAW/litellm-log-lines.txt" || true
  tail -n 50 "$LITELLM_LOG_FILE" >"$RAW/litellm-log-tail.txt" || true
  tail -n 50 "$TG_LOG" >"$RAW/tollgate-log-tail.txt" || true

  local commit
  if [[ -n "${BENCH_TOLLGATE_BIN:-}" ]]; then
    commit="${BENCH_TOLLGATE_COMMIT:-prebuilt}"
  else
    commit="$(git -C "$REPO_DIR" rev-parse --short HEAD 2>/dev/null || echo unknown)"
    if [[ -n "$(git -C "$REPO_DIR" status --porcelain --untracked-files=no -- crates Cargo.toml Cargo.lock 2>/dev/null || true)" ]]; then
      commit="$commit-dirty"
    fi
  fi
  pyver() { "$LITELLM_VENV/bin/python" -c 'import importlib.metadata as m,sys; print(m.version(sys.argv[1]))' "$1" 2>/dev/null || echo unknown; }
  {
    echo "started_utc=$started_utc"
    echo "finished_utc=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "stamp=$STAMP"
    echo "nproc=$(nproc)"
    echo "kernel=$(uname -r)"
    echo "cpu=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)"
    echo "os=$(awk -F= '$1 == "PRETTY_NAME" {gsub(/"/, "", $2); print $2}' /etc/os-release 2>/dev/null || true)"
    echo "clk_tck=$(getconf CLK_TCK)"
    echo "tollgate_commit=$commit"
    echo "tollgate_bin=$BIN"
    echo "litellm_version=$(litellm_installed_version)"
    echo "litellm_openai_version=$(pyver openai)"
    echo "litellm_httpx_version=$(pyver httpx)"
    echo "litellm_uvicorn_version=$(pyver uvicorn)"
    echo "litellm_python=$("$LITELLM_VENV/bin/python" -c 'import platform; print(platform.python_version())')"
    echo "litellm_workers=$LITELLM_WORKERS"
    echo "nginx_version=$("$NGINX" -v 2>&1 | sed 's/^nginx version: //')"
    echo "wrk_version=$(wrk -v 2>&1 | head -n 1 | awk '{print $2}')"
    echo "rustc_version=$(rustc --version 2>/dev/null || echo unknown)"
    echo "threads=$THREADS"
    echo "connections=$CONNS"
    echo "duration_s=$DURATION"
    echo "fixed_duration_s=$FIXED_DURATION"
    echo "rounds=$ROUNDS"
    echo "warmup_s=$WARMUP"
    echo "loadgen_threads=$LOADGEN_THREADS"
    echo "fixed_rate=$RATE"
    echo "fixed_rate_high=$HIGH_RATE"
    echo "cpu_busy_before_pct=$busy"
    echo "rss_tollgate_idle_kb=$tg_rss_idle"
    echo "rss_tollgate_after_kb=$tg_rss_after"
    echo "rss_litellm_idle_kb=$litellm_rss_idle"
    echo "rss_litellm_after_kb=$litellm_rss_after"
  } >"$RAW/meta.env"

  mkdir -p "$RESULTS_DIR"
  local readme_args=()
  if [[ "$(cd "$RESULTS_DIR" 2>/dev/null && pwd)" == "$BENCH_DIR/results" ]]; then
    readme_args=(--readme "$BENCH_DIR/README.md")
  fi
  python3 "$BENCH_DIR/ai_report.py" build --raw "$RAW" --out-dir "$RESULTS_DIR" "${readme_args[@]}"
}

main "$@"
