# Shell helpers shared by bench/run.sh and bench/ai.sh (sourced, not run).
#
# The sourcing script sets, before calling them:
#   LOG_TAG      prefix of log lines ("bench", "bench-ai")
#   HOST         the loopback address everything listens on
#   KEEP_TMP     1 = keep $WORK when the script ends
#   ADMIN_TOKEN, TG_ADMIN_PORT   for admin_call
#   JOBS         cargo -j
# and fills PIDS (processes to stop at exit) and WORK (its temp dir).

log() { printf '[%s %s] %s\n' "$LOG_TAG" "$(date +%H:%M:%S)" "$*" >&2; }
die() {
  log "ERROR: $*"
  exit 1
}
# Last lines of a log file, for error messages.
show_log() {
  if [[ -s "$1" ]]; then
    log "--- last lines of $1 ---"
    tail -n 20 "$1" >&2
  fi
}

# ---------------------------------------------------------------- cleanup ---
# At exit: SIGTERM every process in PIDS, SIGKILL what is left after 5 s, and
# remove WORK (kept, with its path printed, on failure or KEEP_TMP=1).
PIDS=()
WORK=""
cleanup() {
  local rc=$?
  local pid
  for pid in "${PIDS[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 50); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
  done
  if [[ -n "$WORK" && -d "$WORK" ]]; then
    if [[ "$KEEP_TMP" == 1 || $rc -ne 0 ]]; then
      log "temp dir kept: $WORK"
    else
      rm -rf "$WORK"
    fi
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ------------------------------------------------------------------ tools ---
as_root() {
  if ((EUID == 0)); then "$@"; else sudo "$@"; fi
}

# ensure_tools: installs nginx-light, wrk and curl with apt-get where missing
# (apt-get update only if the install fails); sets NGINX.
ensure_tools() {
  local missing=()
  command -v nginx >/dev/null 2>&1 || [[ -x /usr/sbin/nginx ]] || missing+=(nginx-light)
  command -v wrk >/dev/null 2>&1 || missing+=(wrk)
  command -v curl >/dev/null 2>&1 || missing+=(curl)
  if ((${#missing[@]})); then
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    if ! as_root apt-get install -y "${missing[@]}"; then
      log "apt-get install failed; running apt-get update and retrying"
      as_root apt-get update
      as_root apt-get install -y "${missing[@]}" || die "could not install ${missing[*]}"
    fi
  fi
  command -v python3 >/dev/null 2>&1 || die "python3 is needed for the report"
  command -v cargo >/dev/null 2>&1 || die "cargo is needed"
  NGINX="$(command -v nginx 2>/dev/null || echo /usr/sbin/nginx)"
}

# ------------------------------------------------------------------ build ---
# build_tollgate: sets BIN to BENCH_TOLLGATE_BIN, or builds the release binary.
build_tollgate() {
  if [[ -n "${BENCH_TOLLGATE_BIN:-}" ]]; then
    BIN="$BENCH_TOLLGATE_BIN"
    [[ -x "$BIN" ]] || die "BENCH_TOLLGATE_BIN=$BIN is not an executable"
    log "using prebuilt tollgate: $BIN"
    return
  fi
  log "building tollgate (cargo build --release -j$JOBS -p tollgate, target dir $CARGO_TARGET_DIR)"
  cargo build --release -j"$JOBS" -p tollgate || die "cargo build --release -p tollgate FAILED"
  BIN="$CARGO_TARGET_DIR/release/tollgate"
  [[ -x "$BIN" ]] || die "build succeeded but $BIN does not exist"
}

# build_loadgen: builds bench/loadgen; sets LOADGEN.
build_loadgen() {
  log "building the load generator (cargo build --release -j$JOBS -p loadgen)"
  cargo build --release -j"$JOBS" -p loadgen || die "cargo build --release -p loadgen FAILED"
  LOADGEN="$CARGO_TARGET_DIR/release/loadgen"
  [[ -x "$LOADGEN" ]] || die "build succeeded but $LOADGEN does not exist"
}

# ---------------------------------------------------------------- helpers ---
port_busy() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

# wait_http URL SECONDS [PID [AUTHORIZATION]]: poll until URL answers 2xx;
# fail early if PID died.
wait_http() {
  local url="$1" secs="$2" pid="${3:-}" auth="${4:-}"
  local deadline=$((SECONDS + secs))
  until curl -fsS -o /dev/null --max-time 1 ${auth:+-H "Authorization: $auth"} "$url" 2>/dev/null; do
    if [[ -n "$pid" ]] && ! kill -0 "$pid" 2>/dev/null; then
      return 1
    fi
    ((SECONDS < deadline)) || return 1
    sleep 0.05
  done
}

# admin_call METHOD PATH [JSON]: the admin API as root; prints the body, dies
# (with the status and body) unless it answers 2xx.
admin_call() {
  local out
  if ! out=$(curl -sS --max-time 10 -X "$1" -H "Authorization: Bearer $ADMIN_TOKEN" \
    -H 'content-type: application/json' ${3:+--data "$3"} -w '\n%{http_code}' \
    "http://$HOST:$TG_ADMIN_PORT$2"); then
    die "admin $1 $2: no answer"
  fi
  local code="${out##*$'\n'}"
  local body="${out%$'\n'*}"
  [[ "$code" == 2* ]] || die "admin $1 $2 answered $code: $body"
  printf '%s' "$body"
}

# json_field FIELD: one top-level field of the JSON object on stdin.
json_field() {
  python3 -c 'import json,sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"
}

# /proc/stat's "busy total" jiffies over all CPUs.
cpu_jiffies() {
  local _ user nice sys idle iowait irq softirq steal
  read -r _ user nice sys idle iowait irq softirq steal _ </proc/stat
  local busy=$((user + nice + sys + irq + softirq + steal))
  echo "$busy $((busy + idle + iowait))"
}

# busy_pct SECONDS: share of all CPUs busy over that time.
busy_pct() {
  local b1 t1 b2 t2
  read -r b1 t1 < <(cpu_jiffies)
  sleep "$1"
  read -r b2 t2 < <(cpu_jiffies)
  local total=$((t2 - t1))
  echo $((total > 0 ? (b2 - b1) * 100 / total : 0))
}

# cpu_busy_pct: share of all CPUs busy over one second (other work on the
# machine makes the figures noisy: this is recorded and warned about).
cpu_busy_pct() { busy_pct 1; }

# wait_quiet: before a measured run, wait (up to 15 s) until the machine is
# idle, so that one target's deferred work (tollgate's call-log and ledger
# writers catching up, LiteLLM's garbage collection) does not land in the
# next target's run. Prints how long it waited (ms) and how busy it was.
wait_quiet() {
  local pct=100 waited=0
  while ((waited < 30)); do
    pct=$(busy_pct 0.5)
    waited=$((waited + 1))
    ((pct < 10)) && break
  done
  if ((pct >= 10)); then
    log "  (the machine stayed ${pct}% busy for 15 s before this run)"
  fi
  echo "$((waited * 500)) $pct"
}

# A process and its direct children (nginx workers, uvicorn workers).
family() { echo "$1" $(pgrep -P "$1" 2>/dev/null || true); }

# cpu_ticks PID: CPU time (clock ticks) used so far by a process and its
# children: "user system".
cpu_ticks() {
  local pid total_user=0 total_sys=0 user sys
  for pid in $(family "$1"); do
    read -r user sys < <(awk '{print $14, $15}' "/proc/$pid/stat" 2>/dev/null || echo "0 0")
    total_user=$((total_user + user))
    total_sys=$((total_sys + sys))
  done
  echo "$total_user $total_sys"
}

# rss_kb PID: VmRSS of a process plus its direct children, in kB.
rss_kb() {
  local total=0 p kb
  for p in $(family "$1"); do
    kb=$(awk '/^VmRSS:/ {print $2}' "/proc/$p/status" 2>/dev/null || true)
    total=$((total + ${kb:-0}))
  done
  echo "$total"
}

# hwm_kb PID: peak RSS (VmHWM) of a process, in kB.
hwm_kb() { awk '/^VmHWM:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }

# ------------------------------------------------------------------ nginx ---
# nginx as the upstream and as the reference proxy, for run.sh and
# instructions.sh. They use WORK, HOST, UPSTREAM_PORT, UPSTREAM_BODY and NGINX
# (from ensure_tools); nginx_setup sets NGINX_BUILD and NGINX_USER_DIRECTIVE.
nginx_setup() {
  NGINX_BUILD="$("$NGINX" -V 2>&1)"
  NGINX_USER_DIRECTIVE=""
  if ((EUID == 0)); then
    # Keep the workers as the current user (root) instead of nginx's default 'nobody'.
    NGINX_USER_DIRECTIVE="user $(id -un) $(id -gn);"
  fi
}

nginx_head() { # NAME
  local name="$1" t="$WORK/$1-temp"
  mkdir -p "$t"
  cat <<EOF
# generated by bench/lib.sh
$NGINX_USER_DIRECTIVE
worker_processes auto;
daemon off;
pid $WORK/$name.pid;
error_log $WORK/$name-error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  server_tokens off;
  keepalive_requests 1000000;
  keepalive_timeout 75s;
  client_body_temp_path $t/body;
  proxy_temp_path $t/proxy;
EOF
  local m
  for m in fastcgi uwsgi scgi; do
    if ! grep -q -- "--without-http_${m}_module" <<<"$NGINX_BUILD"; then
      echo "  ${m}_temp_path $t/$m;"
    fi
  done
}

write_upstream_conf() {
  nginx_head upstream
  cat <<EOF
  server {
    listen $HOST:$UPSTREAM_PORT backlog=4096;
    location / {
      default_type application/json;
      return 200 '$UPSTREAM_BODY';
    }
  }
}
EOF
}

write_proxy_conf() { # NAME PORT [with-ready-endpoint]
  nginx_head "$1"
  cat <<EOF
  upstream backend {
    server $HOST:$UPSTREAM_PORT;
    keepalive 128;
    keepalive_requests 1000000;
  }
  server {
    listen $HOST:$2 backlog=4096;
    location /bench/ {
      proxy_pass http://backend/;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
EOF
  if [[ -n "${3:-}" ]]; then
    # Self-test only: lets the stand-in answer tollgate's readiness probe.
    echo "    location = /_tollgate/ready { return 200 'ready'; }"
  fi
  echo "  }"
  echo "}"
}

start_nginx() { # NAME [WRAPPER...] -> sets LAST_PID; WRAPPER runs nginx (valgrind)
  local name="$1"
  shift
  "$NGINX" -t -q -p "$WORK/" -c "$WORK/$name.conf" -e "$WORK/$name-error.log" \
    >"$WORK/$name.out" 2>&1 || {
    show_log "$WORK/$name.out"
    die "nginx config $name.conf is invalid"
  }
  "$@" "$NGINX" -p "$WORK/" -c "$WORK/$name.conf" -e "$WORK/$name-error.log" >>"$WORK/$name.out" 2>&1 &
  LAST_PID=$!
  PIDS+=("$LAST_PID")
}
