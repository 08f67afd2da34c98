#!/usr/bin/env python3
"""Analytics and call-log query times against a large store.

Seeds a fresh SQLite store with
  * 30 days of minute and hour rollups as a gateway writing 100 calls a
    second produces them (4 services x 5 apps x 4 statuses per minute), and
  * 10 million call-log rows spread over the last 6 days (the default
    retention is 7),
then starts the release `tollgate serve` on it and times analytics and log
queries through the admin API (loopback only). Results go to
bench/results/<stamp>-observability.json and latest-observability.md.

  python3 bench/observability.py [--calls N] [--days D] [--rate R] [--runs K]

Needs the release binary ($CARGO_TARGET_DIR/release/tollgate, built by
`cargo build --release -p tollgate`) or --bin.
"""

import argparse
import json
import os
import random
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid

MINUTE = 60_000
HOUR = 3_600_000
DAY = 86_400_000
BUCKETS = 16
TOKEN = "bench-observability-token"
GATEWAY = "127.0.0.1:18380"
ADMIN = "127.0.0.1:19380"

SERVICES = [f"svc-{n}" for n in range(4)]
APPS = [f"app-{n}" for n in range(5)]
# (status, code, share of calls, latency bucket)
STATUSES = [
    (200, "", 0.94, 4),
    (402, "insufficient_credit", 0.03, 1),
    (429, "rate_limited", 0.02, 1),
    (502, "upstream_error", 0.01, 7),
]


def call_id(at_ms):
    """UUID v7 of `at_ms` with random bits, as the gateway makes them."""
    bits = (at_ms & 0xFFFF_FFFF_FFFF) << 80
    bits |= 0x7 << 76
    bits |= random.getrandbits(12) << 64
    bits |= 0b10 << 62
    bits |= random.getrandbits(62)
    return str(uuid.UUID(int=bits))


def rollup_rows(start_ms, end_ms, size_ms, rate):
    per_bucket = rate * size_ms // 1000
    combos = len(SERVICES) * len(APPS)
    for bucket in range(start_ms, end_ms, size_ms):
        for service in SERVICES:
            for app in APPS:
                for status, code, share, bucket_index in STATUSES:
                    requests = max(1, int(per_bucket * share / combos))
                    hist = [0] * BUCKETS
                    hist[bucket_index] = requests
                    cost = requests * 10_000_000 if status == 200 else 0
                    yield (bucket, "prov", "cons", service, app, "", status, code, requests,
                           requests * 4_000, requests * 3_000, 0, requests * 120, 0, 0, cost, *hist)


def seed(db_path, args, now_ms):
    db = sqlite3.connect(db_path)
    # Seeding only: no journal, a large cache, and the call log's secondary
    # indexes built once at the end (as a long-running store has them).
    db.execute("PRAGMA journal_mode = OFF")
    db.execute("PRAGMA synchronous = OFF")
    db.execute("PRAGMA cache_size = -1000000")
    indexes = db.execute(
        "SELECT sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'call_logs' AND sql IS NOT NULL"
    ).fetchall()
    for (sql,) in indexes:
        name = sql.split()[2]
        db.execute(f"DROP INDEX {name}")
    hist_cols = ", ".join(f"h{i}" for i in range(BUCKETS))
    marks = ", ".join("?" for _ in range(16 + BUCKETS))
    end = now_ms // HOUR * HOUR + HOUR
    start = end - args.days * DAY
    started = time.time()
    for table, size in (("rollups_minute", MINUTE), ("rollups_hour", HOUR)):
        db.executemany(
            f"INSERT INTO {table} (bucket_ms, provider_team, consumer_team, service, app, model, status, code, "
            f"requests, latency_sum_us, upstream_sum_us, bytes_in, bytes_out, input_tokens, output_tokens, "
            f"cost_nanos, {hist_cols}) VALUES ({marks})",
            rollup_rows(start, end, size, args.rate),
        )
        db.commit()
    # Other tenants of the platform: small teams with one row per hour each,
    # calling their own service (a tenant's question must not read them).
    db.executemany(
        f"INSERT INTO rollups_hour (bucket_ms, provider_team, consumer_team, service, app, model, status, code, "
        f"requests, latency_sum_us, upstream_sum_us, bytes_in, bytes_out, input_tokens, output_tokens, "
        f"cost_nanos, {hist_cols}) VALUES ({marks})",
        ((bucket, f"t-{n}", f"t-{n}", f"svc-t{n}", f"app-t{n}", "", 200, "", 10, 40_000, 30_000, 0, 1_200, 0, 0,
          0, *([0] * 4 + [10] + [0] * (BUCKETS - 5)))
         for bucket in range(start, end, HOUR) for n in range(args.tenants)),
    )
    db.commit()
    # Day rollups (stores since migration 17), as the call writer keeps
    # them: the hour rows summed per UTC day.
    if db.execute("SELECT 1 FROM sqlite_master WHERE name = 'rollups_day'").fetchone():
        keys = "provider_team, consumer_team, service, app, model, status, code"
        values = ("requests, latency_sum_us, upstream_sum_us, bytes_in, bytes_out, input_tokens, output_tokens, "
                  f"cost_nanos, {hist_cols}")
        sums = ", ".join(f"SUM({column.strip()})" for column in values.split(","))
        db.execute(f"INSERT INTO rollups_day (bucket_ms, {keys}, {values}) "
                   f"SELECT (bucket_ms / {DAY}) * {DAY}, {keys}, {sums} FROM rollups_hour "
                   f"GROUP BY (bucket_ms / {DAY}) * {DAY}, {keys}")
        db.commit()
    rollup_s = time.time() - started
    minute_rows = db.execute("SELECT COUNT(*) FROM rollups_minute").fetchone()[0]
    hour_rows = db.execute("SELECT COUNT(*) FROM rollups_hour").fetchone()[0]

    started = time.time()
    span = 6 * DAY
    first = now_ms - span
    step = span / max(args.calls, 1)
    sample_request = None

    def calls():
        nonlocal sample_request
        for n in range(args.calls):
            at = int(first + n * step)
            service = SERVICES[n % len(SERVICES)]
            app = APPS[(n // 7) % len(APPS)]
            status, code, _, _ = STATUSES[0] if n % 25 else STATUSES[1 + (n // 25) % 3]
            request_id = uuid.uuid4().hex
            if n == args.calls // 2:
                sample_request = request_id
            yield (call_id(at), request_id, at, "GET", "api.example.com", f"/{service}/items/{n % 1000}",
                   status, code or None, 4_000, 3_000 if status != 402 else None, 0, 120, "10.0.0.1",
                   "cons", app, "tg_live_abcd", "sub", "plan", "prov", service, "route", None,
                   10_000_000 if status == 200 else 0, None, None, None, 0, 0, None, 1)

    db.executemany(
        "INSERT INTO call_logs (id, request_id, at_ms, method, host, path, status, code, latency_us, "
        "upstream_latency_us, bytes_in, bytes_out, client_ip, consumer_team, app, key_prefix, "
        "subscription_id, plan, provider_team, service, route_id, upstream_target, cost_nanos, problem, "
        "provider, model, input_tokens, output_tokens, ttft_us, completed) VALUES "
        "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        calls(),
    )
    db.commit()
    for (sql,) in indexes:
        db.execute(sql)
    db.commit()
    db.execute("PRAGMA journal_mode = WAL")
    calls_s = time.time() - started
    db.close()
    return {
        "minute_rows": minute_rows,
        "hour_rows": hour_rows,
        "call_rows": args.calls,
        "seed_rollups_s": round(rollup_s, 1),
        "seed_calls_s": round(calls_s, 1),
        "sample_request": sample_request,
        "range_start_ms": start,
        "range_end_ms": end,
    }


def get(path, token=TOKEN):
    request = urllib.request.Request(f"http://{ADMIN}{path}", headers={"Authorization": f"Bearer {token}"})
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=60) as response:
        body = response.read()
        status = response.status
    return status, (time.perf_counter() - started) * 1000, body


def post(path, body):
    request = urllib.request.Request(f"http://{ADMIN}{path}", data=json.dumps(body).encode(), method="POST",
                                     headers={"Authorization": f"Bearer {TOKEN}",
                                              "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def tenant_member():
    """A personal token of a developer in team `t-7`, one of the small tenants."""
    team = "t-7"
    post("/api/v1/teams", {"slug": team, "name": team})
    user = post("/api/v1/users", {"email": "dev@tenant.test", "password": "a long enough password"})
    post(f"/api/v1/teams/{team}/members", {"user": user["id"], "role": "developer"})
    return post("/api/v1/tokens", {"user": "dev@tenant.test"})["token_secret"]


def wait_ready(proc):
    for _ in range(600):
        if proc.poll() is not None:
            sys.exit("tollgate exited before it was ready")
        try:
            with urllib.request.urlopen(f"http://{GATEWAY}/_tollgate/ready", timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    sys.exit("tollgate not ready after 60 s")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=10_000_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--rate", type=int, default=100, help="calls per second the rollups stand for")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--tenants", type=int, default=0,
                        help="other small tenants with hourly rollups, and a question asked as one of them")
    target = os.environ.get("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/tollgate-target"))
    parser.add_argument("--bin", default=os.path.join(target, "release", "tollgate"))
    parser.add_argument("--results", default=os.path.join(os.path.dirname(__file__), "results"))
    args = parser.parse_args()
    if not os.access(args.bin, os.X_OK):
        sys.exit(f"no tollgate binary at {args.bin}: cargo build --release -p tollgate")

    work = tempfile.mkdtemp(prefix="tollgate-obs-")
    try:
        run(args, work)
    finally:
        subprocess.run(["rm", "-rf", work])


def run(args, work):
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOLLGATE_")}
    env.update({
        "TOLLGATE_ADMIN_TOKEN": TOKEN,
        "TOLLGATE_DATA_DIR": work,
        "TOLLGATE_GATEWAY__LISTEN": GATEWAY,
        "TOLLGATE_ADMIN__LISTEN": ADMIN,
        "TOLLGATE_LOG__LEVEL": "warn",
    })
    subprocess.run([args.bin, "migrate"], env=env, check=True, stdout=subprocess.DEVNULL)
    now_ms = int(time.time() * 1000)
    print(f"seeding {work} ...", file=sys.stderr)
    seeded = seed(os.path.join(work, "tollgate.db"), args, now_ms)
    print(json.dumps(seeded), file=sys.stderr)
    db_bytes = sum(os.path.getsize(os.path.join(work, f)) for f in os.listdir(work) if f.startswith("tollgate.db"))

    proc = subprocess.Popen([args.bin, "serve"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        wait_ready(proc)
        tenant_token = tenant_member() if args.tenants > 7 else None
        start, end = seeded["range_start_ms"], seeded["range_end_ms"]
        # Whole minutes: a day of 1m points is exactly 1440.
        minute_end = (now_ms // MINUTE + 1) * MINUTE
        day_ago = minute_end - DAY
        queries = [
            ("summary, 30 days, group_by=service", f"/api/v1/analytics/summary?from={start}&to={end}&group_by=service"),
            ("summary, 30 days, one app", f"/api/v1/analytics/summary?from={start}&to={end}&app=app-3"),
            ("summary, 30 days, not hour-aligned", f"/api/v1/analytics/summary?from={start + 17 * MINUTE}&to={end - 23 * MINUTE}"),
            ("timeseries requests, 1h over 30 days", f"/api/v1/analytics/timeseries?metric=requests&interval=1h&from={start}&to={end}"),
            ("timeseries latency_p95, 1d over 30 days, group_by=app", f"/api/v1/analytics/timeseries?metric=latency_p95&interval=1d&from={start}&to={end}&group_by=app"),
            ("timeseries errors, 1m over the last day", f"/api/v1/analytics/timeseries?metric=errors&interval=1m&from={day_ago}&to={minute_end}"),
            ("logs, newest 50", "/api/v1/logs?limit=50"),
            ("logs, app + code, last day, 50", f"/api/v1/logs?limit=50&app=app-2&code=insufficient_credit&from={day_ago}"),
            ("logs, one service, 5 days ago, 50", f"/api/v1/logs?limit=50&service=svc-1&from={now_ms - 5 * DAY}&to={now_ms - 4 * DAY}"),
            ("logs, by request id", f"/api/v1/logs?request_id={seeded['sample_request']}"),
        ]
        if tenant_token:
            queries.append((f"summary, 30 days, as a member of one small tenant of {args.tenants}",
                            f"/api/v1/analytics/summary?from={start}&to={end}", tenant_token))
        results = []
        for name, path, *token in queries:
            token = token[0] if token else TOKEN
            status, _, body = get(path, token)
            if status != 200:
                sys.exit(f"{path} answered {status}: {body[:300]!r}")
            for _ in range(3):
                get(path, token)
            times = [get(path, token)[1] for _ in range(args.runs)]
            times.sort()
            result = {
                "query": name,
                "path": path,
                "p50_ms": round(statistics.median(times), 2),
                "p95_ms": round(times[int(len(times) * 0.95) - 1], 2),
                "max_ms": round(times[-1], 2),
            }
            if "summary" in path:
                result["requests_counted"] = json.loads(body)["requests"]
            results.append(result)
            print(json.dumps(result), file=sys.stderr)
    finally:
        proc.terminate()
        proc.wait(timeout=15)

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=os.path.dirname(__file__)).stdout.strip()
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    doc = {"stamp": stamp, "commit": commit, "seeded": seeded, "database_bytes": db_bytes,
           "runs_per_query": args.runs, "rate_per_second": args.rate, "days": args.days, "results": results}
    os.makedirs(args.results, exist_ok=True)
    with open(os.path.join(args.results, f"{stamp}-observability.json"), "w") as out:
        json.dump(doc, out, indent=2)
        out.write("\n")
    lines = [
        f"## Analytics and call-log queries ({stamp}, tollgate `{commit}`)",
        "",
        f"SQLite store with {seeded['minute_rows']:,} minute and {seeded['hour_rows']:,} hour rollup rows "
        f"({args.days} days at {args.rate} calls/s) and {seeded['call_rows']:,} call-log rows "
        f"({db_bytes / 2**30:.1f} GiB); {args.runs} timed runs per query through the admin API.",
        "",
        "| query | p50 ms | p95 ms | max ms |",
        "| --- | ---: | ---: | ---: |",
    ]
    for r in results:
        lines.append(f"| {r['query']} | {r['p50_ms']} | {r['p95_ms']} | {r['max_ms']} |")
    md = "\n".join(lines) + "\n"
    with open(os.path.join(args.results, "latest-observability.md"), "w") as out:
        out.write(md)
    print(md)


if __name__ == "__main__":
    main()
