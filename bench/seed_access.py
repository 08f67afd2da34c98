#!/usr/bin/env python3
"""Loads many apps, API keys and subscriptions straight into a tollgate
SQLite database, for the access benchmark (bench/run.sh, BENCH_MODE=access).

Going through the admin API would take minutes for 100,000 keys; this writes
the same rows the admin API writes (keys as SHA-256 hex plus prefix, never
the key), in one transaction that also bumps the configuration version, so a
running tollgate picks everything up within its poll interval.

    seed_access.py --db PATH --apps N --keys-per-app K --service-id ID \
        --plan-id ID --team SLUG --keys-out FILE

Writes one key per line to FILE (the first key of each of the first 100
apps); prints a JSON line with the counts and the time taken.
"""

import argparse
import hashlib
import json
import secrets
import sqlite3
import string
import sys
import time
import uuid

ALPHABET = string.ascii_letters + string.digits


def key() -> str:
    return "tg_live_" + "".join(secrets.choice(ALPHABET) for _ in range(40))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", required=True)
    parser.add_argument("--apps", type=int, required=True)
    parser.add_argument("--keys-per-app", type=int, required=True)
    parser.add_argument("--service-id", required=True)
    parser.add_argument("--plan-id", required=True)
    parser.add_argument("--team", required=True)
    parser.add_argument("--keys-out", required=True)
    args = parser.parse_args()
    if args.apps < 1 or args.keys_per_app < 1:
        sys.exit("--apps and --keys-per-app must be positive")

    started = time.monotonic()
    now_ms = int(time.time() * 1000)
    db = sqlite3.connect(args.db, timeout=30)
    db.execute("PRAGMA busy_timeout = 30000")
    apps, keys, subscriptions, sample = [], [], [], []
    for a in range(args.apps):
        app_id = str(uuid.uuid4())
        slug = f"bench-app-{a:06d}"
        apps.append((app_id, slug, args.team, json.dumps({"slug": slug, "team": args.team}), now_ms, now_ms))
        subscriptions.append(
            (str(uuid.uuid4()), app_id, args.service_id, args.plan_id, "active", None, args.team, None, now_ms, now_ms,
             now_ms, now_ms + 30 * 86_400_000, now_ms)
        )
        for k in range(args.keys_per_app):
            secret = key()
            keys.append(
                (
                    str(uuid.uuid4()),
                    app_id,
                    None,
                    secret[:12],
                    hashlib.sha256(secret.encode()).hexdigest(),
                    "[]",
                    None,
                    None,
                    now_ms,
                )
            )
            if k == 0 and a < 100:
                sample.append(secret)
    with db:
        db.executemany(
            "INSERT INTO apps (id, slug, team, spec, created_at_ms, updated_at_ms) VALUES (?, ?, ?, ?, ?, ?)", apps
        )
        db.executemany(
            "INSERT INTO api_keys (id, app_id, name, prefix, hash, scopes, expires_at_ms, revoked_at_ms, created_at_ms) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            keys,
        )
        db.executemany(
            "INSERT INTO subscriptions (id, app_id, service_id, plan_id, status, reason, consumer_team, provider_team, "
            "created_at_ms, updated_at_ms, period_start_ms, period_end_ms, anchor_ms) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            subscriptions,
        )
        db.execute("UPDATE config_state SET version = version + 1 WHERE id = 1")
    db.close()
    with open(args.keys_out, "w") as out:
        out.write("\n".join(sample) + "\n")
    print(
        json.dumps(
            {"apps": len(apps), "keys": len(keys), "subscriptions": len(subscriptions),
             "seconds": round(time.monotonic() - started, 2)}
        )
    )


if __name__ == "__main__":
    main()
