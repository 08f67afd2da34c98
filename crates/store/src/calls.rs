//! The call log and the analytics rollups.
//!
//! - `call_logs`: one row per call ([`CallRow`]), keyed by a UUID v7 made
//!   from the call's time ([`call_id`]), so newest-first pages and time
//!   ranges both walk the primary key.
//! - `rollups_minute` / `rollups_hour`: counts per bucket and combination
//!   of teams, service, app, model, status and code ([`RollupKey`],
//!   [`RollupValues`]); writers add to them, so nodes sum up.

use std::borrow::Cow;
use std::sync::{Arc, OnceLock};

use domain::calls::{CallBodies, CallEntry, LATENCY_BUCKET_COUNT};
use sqlx::any::AnyRow;
use sqlx::{Arguments, Row};

use crate::objects::{fetch_limit, page_of};
use crate::{Backend, Page, Result, Store, StoreError, Visible, WriteTx, int, opt_text, text};

/// A stored call: its id and what happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallRow {
    pub id: String,
    pub entry: CallEntry,
}

/// The id of a call made at `at_ms`: a UUID v7 with that time, so ids sort
/// by time. `random` fills the rest.
pub fn call_id(at_ms: i64, random: u128) -> String {
    let mut id = String::with_capacity(36);
    push_call_id(&mut id, at_ms, random);
    id
}

/// [`call_id`], appended to `out`.
pub fn push_call_id(out: &mut String, at_ms: i64, random: u128) {
    let millis = u64::try_from(at_ms).unwrap_or(0) & 0xFFFF_FFFF_FFFF;
    let bits = (u128::from(millis) << 80)
        | (0x7 << 76)
        | (random & (0xFFF << 64))
        | (0b10 << 62)
        | (random & 0x3FFF_FFFF_FFFF_FFFF);
    let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
    out.push_str(
        uuid::Uuid::from_u128(bits)
            .hyphenated()
            .encode_lower(&mut text),
    );
}

/// The smallest id a call at `at_ms` or later can have.
fn id_floor(at_ms: i64) -> String {
    call_id(at_ms, 0)
}

/// What to look for in the call log; `None`: any.
#[derive(Debug, Default, Clone)]
pub struct CallFilter<'a> {
    /// `[from_ms, to_ms)`.
    pub from_ms: Option<i64>,
    pub to_ms: Option<i64>,
    /// Calls by this team's apps or to its services.
    pub team: Option<&'a str>,
    pub app: Option<&'a str>,
    pub key_prefix: Option<&'a str>,
    pub service: Option<&'a str>,
    pub route_id: Option<&'a str>,
    pub status: Option<i64>,
    pub code: Option<&'a str>,
    pub model: Option<&'a str>,
    pub request_id: Option<&'a str>,
}

/// Rollup granularity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Granularity {
    Minute,
    Hour,
    /// UTC days.
    Day,
}

impl Granularity {
    pub fn millis(self) -> i64 {
        match self {
            Granularity::Minute => 60_000,
            Granularity::Hour => 3_600_000,
            Granularity::Day => 86_400_000,
        }
    }

    /// The start of the bucket `at_ms` falls in.
    pub fn bucket(self, at_ms: i64) -> i64 {
        at_ms.div_euclid(self.millis()) * self.millis()
    }

    fn table(self) -> &'static str {
        match self {
            Granularity::Minute => "rollups_minute",
            Granularity::Hour => "rollups_hour",
            Granularity::Day => "rollups_day",
        }
    }
}

/// One rollup row's identity; empty strings stand for none. Ordered as
/// the primary key (the writer upserts in this order).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct RollupKey {
    pub bucket_ms: i64,
    pub provider_team: String,
    pub consumer_team: String,
    pub service: String,
    pub app: String,
    pub model: String,
    pub status: i64,
    pub code: String,
}

/// What a rollup row counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RollupValues {
    pub requests: i64,
    pub latency_sum_us: i64,
    pub upstream_sum_us: i64,
    pub bytes_in: i64,
    pub bytes_out: i64,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cost_nanos: i64,
    pub latency_buckets: [u64; LATENCY_BUCKET_COUNT],
}

impl RollupValues {
    /// Counts one call.
    pub fn add_call(&mut self, entry: &CallEntry) {
        let clamp = unsigned;
        self.requests += 1;
        self.latency_sum_us = self.latency_sum_us.saturating_add(clamp(entry.latency_us));
        self.upstream_sum_us = self
            .upstream_sum_us
            .saturating_add(clamp(entry.upstream_latency_us.unwrap_or(0)));
        self.bytes_in = self.bytes_in.saturating_add(clamp(entry.bytes_in));
        self.bytes_out = self.bytes_out.saturating_add(clamp(entry.bytes_out));
        self.input_tokens = self.input_tokens.saturating_add(clamp(entry.input_tokens));
        self.output_tokens = self
            .output_tokens
            .saturating_add(clamp(entry.output_tokens));
        self.cost_nanos = self.cost_nanos.saturating_add(entry.cost_nanos);
        self.latency_buckets[domain::calls::latency_bucket(entry.latency_us)] += 1;
    }

    /// Adds another row's counts.
    pub fn merge(&mut self, other: &RollupValues) {
        self.requests += other.requests;
        self.latency_sum_us = self.latency_sum_us.saturating_add(other.latency_sum_us);
        self.upstream_sum_us = self.upstream_sum_us.saturating_add(other.upstream_sum_us);
        self.bytes_in = self.bytes_in.saturating_add(other.bytes_in);
        self.bytes_out = self.bytes_out.saturating_add(other.bytes_out);
        self.input_tokens = self.input_tokens.saturating_add(other.input_tokens);
        self.output_tokens = self.output_tokens.saturating_add(other.output_tokens);
        self.cost_nanos = self.cost_nanos.saturating_add(other.cost_nanos);
        domain::calls::add_buckets(&mut self.latency_buckets, &other.latency_buckets);
    }
}

impl RollupKey {
    /// The key a call counts under, in buckets of `granularity`.
    pub fn of(entry: &CallEntry, granularity: Granularity) -> Self {
        let none = String::new;
        Self {
            bucket_ms: granularity.bucket(entry.at_ms),
            provider_team: entry.provider_team.clone().unwrap_or_else(none),
            consumer_team: entry.consumer_team.clone().unwrap_or_else(none),
            service: entry.service.clone().unwrap_or_else(none),
            app: entry.app.clone().unwrap_or_else(none),
            model: entry.model.clone().unwrap_or_else(none),
            status: i64::from(entry.status),
            code: entry.code.clone().unwrap_or_else(none),
        }
    }
}

/// What analytics group by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupBy {
    Service,
    App,
    /// The calling app's team.
    Team,
    Model,
    Status,
    Code,
}

impl GroupBy {
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "service" => GroupBy::Service,
            "app" => GroupBy::App,
            "team" => GroupBy::Team,
            "model" => GroupBy::Model,
            "status" => GroupBy::Status,
            "code" => GroupBy::Code,
            _ => return None,
        })
    }

    fn column(self) -> &'static str {
        match self {
            GroupBy::Service => "service",
            GroupBy::App => "app",
            GroupBy::Team => "consumer_team",
            GroupBy::Model => "model",
            GroupBy::Status => "CAST(status AS TEXT)",
            GroupBy::Code => "code",
        }
    }
}

/// An analytics question over the rollups.
#[derive(Debug, Clone)]
pub struct RollupQuery<'a> {
    pub granularity: Granularity,
    /// `[from_ms, to_ms)`, aligned to the granularity by the caller.
    pub from_ms: i64,
    pub to_ms: i64,
    /// Width of each answered slot (a multiple of the granularity); the
    /// whole range when it is at least as long.
    pub interval_ms: i64,
    pub group_by: Option<GroupBy>,
    /// Rows of these teams' services or apps.
    pub visible: &'a Visible,
    pub service: Option<&'a str>,
    pub app: Option<&'a str>,
    /// Calls by this team's apps or to its services.
    pub team: Option<&'a str>,
    /// Sum the latency buckets too (percentiles); else they read 0.
    pub latency: bool,
    /// Which of the other figures to add up (`requests` always).
    pub figures: Figures,
}

/// The figures a rollup query adds up; the others read 0. Fewer columns
/// make the records SQLite sorts for `GROUP BY` smaller (a day of minute
/// slots: 186 → 116-130 ms in a replay with `requests` alone).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Figures {
    All,
    /// These columns of the rollups (`bytes_in`, `cost_nanos`, …).
    Only(&'static [&'static str]),
}

impl Figures {
    fn includes(self, column: &str) -> bool {
        match self {
            Figures::All => true,
            Figures::Only(columns) => column == "requests" || columns.contains(&column),
        }
    }
}

/// One slot (and group) of an analytics answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RollupSlot {
    /// The slot's start.
    pub start_ms: i64,
    /// The group's value (empty: none, or not grouped).
    pub group: String,
    pub status: i64,
    /// The refusal code (empty: answered).
    pub code: String,
    pub values: RollupValues,
}

macro_rules! call_columns {
    () => {
        "id, request_id, at_ms, method, host, path, status, code, latency_us, \
         upstream_latency_us, bytes_in, bytes_out, client_ip, consumer_team, app, key_prefix, \
         subscription_id, plan, provider_team, service, route_id, upstream_target, cost_nanos, \
         problem, provider, model, input_tokens, output_tokens, ttft_us, completed"
    };
}
const CALL_COLUMNS: &str = call_columns!();

/// The rollup columns that add up (besides the latency buckets).
const SUMMED: [&str; 8] = [
    "requests",
    "latency_sum_us",
    "upstream_sum_us",
    "bytes_in",
    "bytes_out",
    "input_tokens",
    "output_tokens",
    "cost_nanos",
];

/// The call log's `INSERT` of `INSERT_ROWS[size]` calls; a call already
/// there is kept. SQLite's `OR IGNORE` rather than an upsert clause: a
/// statement that may abort half-way (a `NOT NULL` column) makes SQLite
/// journal every page it touches, in case it has to undo the statement.
fn insert_statement(backend: Backend, size: usize) -> &'static str {
    static CACHE: crate::InsertCache = [const { [const { OnceLock::new() }; 3] }; 2];
    let (head, tail) = match backend {
        Backend::Sqlite => (
            concat!("INSERT OR IGNORE INTO call_logs (", call_columns!(), ")"),
            "",
        ),
        Backend::Postgres => (
            concat!("INSERT INTO call_logs (", call_columns!(), ")"),
            " ON CONFLICT (id) DO NOTHING",
        ),
    };
    crate::multi_row_insert(&CACHE, backend, size, (head, CALL_VALUES, tail))
}

/// Values per call row.
const CALL_VALUES: usize = 30;

/// The `INSERT` of one call's bodies (kept if already there).
fn bodies_statement(backend: Backend) -> &'static str {
    static CACHE: crate::InsertCache = [const { [const { OnceLock::new() }; 3] }; 2];
    let (head, tail) = match backend {
        Backend::Sqlite => (
            "INSERT OR IGNORE INTO call_bodies (call_id, request_headers, request_body, \
             request_bytes, response_headers, response_body, response_bytes)",
            "",
        ),
        Backend::Postgres => (
            "INSERT INTO call_bodies (call_id, request_headers, request_body, request_bytes, \
             response_headers, response_body, response_bytes)",
            " ON CONFLICT (call_id) DO NOTHING",
        ),
    };
    // The one-row size.
    let one = crate::INSERT_ROWS.len() - 1;
    crate::multi_row_insert(&CACHE, backend, one, (head, 7, tail))
}

/// A call's bodies' 7 values, in the order of [`bodies_statement`].
fn body_values<'a>(id: &'a str, bodies: &'a CallBodies) -> [Value<'a>; 7] {
    use Value::{Number, Text};
    [
        Text(Some(id)),
        Text(Some(&bodies.request_headers)),
        Text(bodies.request_body.as_deref()),
        Number(Some(unsigned(bodies.request_bytes))),
        Text(Some(&bodies.response_headers)),
        Text(bodies.response_body.as_deref()),
        Number(Some(unsigned(bodies.response_bytes))),
    ]
}

/// The upsert that adds one row to the rollups of `granularity`.
fn rollup_statement(backend: Backend, granularity: Granularity) -> &'static str {
    static CACHE: [[OnceLock<String>; 3]; 2] = [const { [const { OnceLock::new() }; 3] }; 2];
    let numbered = backend == Backend::Postgres;
    CACHE[usize::from(numbered)][granularity as usize].get_or_init(|| {
        let table = granularity.table();
        let buckets = (0..LATENCY_BUCKET_COUNT)
            .map(|i| format!("h{i}"))
            .collect::<Vec<_>>();
        let placeholders = (1..=ROLLUP_VALUES)
            .map(|n| {
                if numbered {
                    format!("${n}")
                } else {
                    "?".to_owned()
                }
            })
            .collect::<Vec<_>>()
            .join(", ");
        let add = |column: &str| format!("{column} = {table}.{column} + excluded.{column}");
        let mut sums = SUMMED.iter().map(|c| add(c)).collect::<Vec<_>>();
        sums.extend(buckets.iter().map(|c| add(c)));
        format!(
            "INSERT INTO {table} (bucket_ms, provider_team, consumer_team, service, app, model, \
             status, code, {}, {}) VALUES ({placeholders}) ON CONFLICT (bucket_ms, provider_team, \
             consumer_team, service, app, model, status, code) DO UPDATE SET {}",
            SUMMED.join(", "),
            buckets.join(", "),
            sums.join(", ")
        )
    })
}

/// Values per rollup row before the latency buckets: the key's 8 and the
/// sums' 8.
const ROLLUP_HEAD: usize = 8 + SUMMED.len();
/// Values per rollup row.
const ROLLUP_VALUES: usize = ROLLUP_HEAD + LATENCY_BUCKET_COUNT;

/// A rollup row's values, in the order of [`rollup_statement`].
fn rollup_values<'a>(key: &'a RollupKey, values: &RollupValues) -> [Value<'a>; ROLLUP_VALUES] {
    use Value::{Number, Text};
    let head: [Value<'a>; ROLLUP_HEAD] = [
        Number(Some(key.bucket_ms)),
        Text(Some(&key.provider_team)),
        Text(Some(&key.consumer_team)),
        Text(Some(&key.service)),
        Text(Some(&key.app)),
        Text(Some(&key.model)),
        Number(Some(key.status)),
        Text(Some(&key.code)),
        Number(Some(values.requests)),
        Number(Some(values.latency_sum_us)),
        Number(Some(values.upstream_sum_us)),
        Number(Some(values.bytes_in)),
        Number(Some(values.bytes_out)),
        Number(Some(values.input_tokens)),
        Number(Some(values.output_tokens)),
        Number(Some(values.cost_nanos)),
    ];
    let mut buckets = values.latency_buckets.iter();
    std::array::from_fn(|i| match head.get(i) {
        Some(value) => *value,
        None => Number(buckets.next().map(|count| unsigned(*count))),
    })
}

/// A value to bind.
#[derive(Clone, Copy)]
enum Value<'a> {
    Text(Option<&'a str>),
    Number(Option<i64>),
}

impl Value<'_> {
    fn is_null(&self) -> bool {
        matches!(self, Value::Text(None) | Value::Number(None))
    }
}

/// A call's 30 values, in the order of [`CALL_COLUMNS`].
fn values(row: &CallRow) -> [Value<'_>; CALL_VALUES] {
    use Value::{Number, Text};
    let e = &row.entry;
    [
        Text(Some(&row.id)),
        Text(Some(&e.request_id)),
        Number(Some(e.at_ms)),
        Text(Some(&e.method)),
        Text(e.host.as_deref()),
        Text(Some(&e.path)),
        Number(Some(i64::from(e.status))),
        Text(e.code.as_deref()),
        Number(Some(unsigned(e.latency_us))),
        Number(e.upstream_latency_us.map(unsigned)),
        Number(Some(unsigned(e.bytes_in))),
        Number(Some(unsigned(e.bytes_out))),
        Text(Some(&e.client_ip)),
        Text(e.consumer_team.as_deref()),
        Text(e.app.as_deref()),
        Text(e.key_prefix.as_deref()),
        Text(e.subscription_id.as_deref()),
        Text(e.plan.as_deref()),
        Text(e.provider_team.as_deref()),
        Text(e.service.as_deref()),
        Text(e.route_id.as_deref()),
        Text(e.upstream_target.as_deref()),
        Number(Some(e.cost_nanos)),
        Text(e.problem.as_deref()),
        Text(e.provider.as_deref()),
        Text(e.model.as_deref()),
        Number(Some(unsigned(e.input_tokens))),
        Number(Some(unsigned(e.output_tokens))),
        Number(e.ttft_us.map(unsigned)),
        Number(Some(i64::from(e.completed))),
    ]
}

/// Appends ` AND <template>` to `sql`, its `?` (each one) standing for
/// `value`, bound as the next parameter.
fn add_condition<'a>(
    sql: &mut String,
    values: &mut Vec<Value<'a>>,
    template: &str,
    value: Value<'a>,
) {
    values.push(value);
    sql.push_str(" AND ");
    sql.push_str(&template.replace('?', &format!("${}", values.len())));
}

/// [`add_condition`] for each text filter that is given.
fn add_texts<'a>(
    sql: &mut String,
    values: &mut Vec<Value<'a>>,
    filters: &[(&str, Option<&'a str>)],
) {
    for &(template, value) in filters {
        if let Some(value) = value {
            add_condition(sql, values, template, Value::Text(Some(value)));
        }
    }
}

fn unsigned(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// A column holding a count (never negative).
fn count(row: &AnyRow, column: &str) -> Result<u64> {
    Ok(u64::try_from(int(row, column)?).unwrap_or(0))
}

fn call_from(row: &AnyRow) -> Result<CallRow> {
    let count = |column: &str| count(row, column);
    let maybe = |column: &str| -> Result<Option<u64>> {
        Ok(row
            .try_get::<Option<i64>, _>(column)?
            .map(|v| u64::try_from(v).unwrap_or(0)))
    };
    Ok(CallRow {
        id: text(row, "id")?,
        entry: CallEntry {
            request_id: text(row, "request_id")?,
            at_ms: int(row, "at_ms")?,
            method: text(row, "method")?,
            host: opt_text(row, "host")?,
            path: text(row, "path")?,
            status: u16::try_from(int(row, "status")?).unwrap_or(0),
            code: opt_text(row, "code")?,
            latency_us: count("latency_us")?,
            upstream_latency_us: maybe("upstream_latency_us")?,
            upstream_body_us: None,
            bytes_in: count("bytes_in")?,
            bytes_out: count("bytes_out")?,
            client_ip: text(row, "client_ip")?,
            consumer_team: opt_text(row, "consumer_team")?,
            app: opt_text(row, "app")?,
            key_prefix: opt_text(row, "key_prefix")?,
            subscription_id: opt_text(row, "subscription_id")?,
            plan: opt_text(row, "plan")?,
            provider_team: opt_text(row, "provider_team")?,
            service: opt_text(row, "service")?,
            route_id: opt_text(row, "route_id")?,
            upstream_target: opt_text(row, "upstream_target")?,
            cost_nanos: int(row, "cost_nanos")?,
            problem: opt_text(row, "problem")?,
            provider: opt_text(row, "provider")?,
            model: opt_text(row, "model")?,
            input_tokens: count("input_tokens")?,
            output_tokens: count("output_tokens")?,
            ttft_us: maybe("ttft_us")?,
            completed: int(row, "completed")? != 0,
            bodies: None,
            http_route: None,
            trace: None,
        },
    })
}

/// One transaction of the call writer: calls for the call log (with the
/// bodies of those that have them) and additions to the minute, hour and
/// day rollups.
#[derive(Debug, Default, Clone)]
pub struct CallBatch {
    /// Boxed: the call writer moves rows between its batches and its
    /// spare rows, and a `CallRow` is some 600 bytes.
    pub calls: Vec<Box<CallRow>>,
    pub minute: Vec<(RollupKey, RollupValues)>,
    pub hour: Vec<(RollupKey, RollupValues)>,
    pub day: Vec<(RollupKey, RollupValues)>,
}

impl Store {
    /// Writes `batch` in one transaction: the calls (a call already there
    /// is kept, so a batch written again is logged once) and the rollup
    /// additions, as multi-row statements of bound values (see
    /// [`crate::INSERT_ROWS`]). On SQLite through the store's own
    /// connection (`direct.rs`), in a blocking task; on PostgreSQL
    /// through the pool.
    pub async fn write_calls(&self, batch: Arc<CallBatch>) -> Result<()> {
        let Some(direct) = &self.direct else {
            let mut tx = self.begin().await?;
            tx.insert_calls(&batch.calls).await?;
            tx.add_rollups(Granularity::Minute, &batch.minute).await?;
            tx.add_rollups(Granularity::Hour, &batch.hour).await?;
            tx.add_rollups(Granularity::Day, &batch.day).await?;
            return tx.commit().await;
        };
        // Queued behind the pool's writers, as `begin` does.
        let guard = self.write_lock.clone().lock_owned().await;
        let direct = direct.clone();
        tokio::task::spawn_blocking(move || {
            let _guard = guard;
            direct.with(|connection| write_sqlite(connection, &batch))
        })
        .await
        .map_err(|error| StoreError::Sqlite(format!("the call writer's task failed: {error}")))?
    }
}

/// The calls of one request id, as a condition: the call whose row id it
/// is (the gateway minted it for that call), and those that carried it
/// otherwise (a client's id), which alone are in the request id index.
/// Written as a subquery so that both planners look the request id up
/// first: as a plain equality beside a team's equality, SQLite (no
/// statistics) picked the team's index and read every call of the team
/// (312 ms for a team of 500,000 calls, against 0.5 ms through the
/// request id's index).
/// A request id's calls: the one that took the id as its row id (the
/// gateway minted it), and those a client sent it on. A row id is matched
/// only where it is that call's request id, so a client's id never finds
/// another call by its row id.
const REQUEST_CALLS: &str = "id IN (SELECT id FROM call_logs WHERE id = ? AND request_id = id \
     UNION ALL SELECT id FROM call_logs WHERE request_id = ? AND request_id <> id)";

/// Teams whose calls [`calls_query`] walks along the team indexes.
const MAX_TEAM_WALKS: usize = 100;

/// The statement of [`Store::calls_by_request`].
fn by_request_sql() -> String {
    format!(
        "SELECT {CALL_COLUMNS} FROM call_logs WHERE {} AND consumer_team = $2 \
         AND app = $3 ORDER BY id DESC LIMIT $4",
        REQUEST_CALLS.replace('?', "$1")
    )
}

/// The statement and values of [`Store::calls`].
/// `[floor, ceiling)` are id bounds (the time range, and the page's
/// cursor).
///
/// Only the filters given are written into the statement, so the planners
/// see plain equalities. Calls of given teams (the filter's team, or a
/// tenant's teams) are the newest `limit` of each team on each side,
/// each read backwards along that side's team index, then merged: a
/// condition `consumer_team = t OR provider_team = t` (or the tenant
/// fence alone) made SQLite read every call of the team, or every call in
/// the range, and sort them (1.9 s for a team of 500,000 calls, 1.3 s for
/// a tenant with none among a million; 0.3-4 ms this way).
fn calls_query<'a>(
    visible: &'a Visible,
    filter: &CallFilter<'a>,
    floor: &'a str,
    ceiling: &'a str,
    limit: usize,
) -> (String, Vec<Value<'a>>) {
    let mut values: Vec<Value<'a>> = vec![Value::Text(Some(floor)), Value::Text(Some(ceiling))];
    let mut conditions = String::from("id >= $1 AND id < $2");
    let texts = [
        (REQUEST_CALLS, filter.request_id),
        ("app = ?", filter.app),
        ("key_prefix = ?", filter.key_prefix),
        ("service = ?", filter.service),
        ("route_id = ?", filter.route_id),
        ("code = ?", filter.code),
        ("model = ?", filter.model),
    ];
    add_texts(&mut conditions, &mut values, &texts);
    if let Some(status) = filter.status {
        add_condition(
            &mut conditions,
            &mut values,
            "status = ?",
            Value::Number(Some(status)),
        );
    }
    if !visible.is_all() {
        // The tenant fence, on every row whatever the branch.
        add_condition(
            &mut conditions,
            &mut values,
            "((',' || ? || ',') LIKE ('%,' || consumer_team || ',%') \
             OR (',' || ? || ',') LIKE ('%,' || provider_team || ',%'))",
            Value::Text(Some(visible.param())),
        );
    }
    values.push(Value::Number(Some(fetch_limit(limit))));
    let limit = values.len();
    let teams: Vec<&'a str> = match filter.team {
        Some(team) => vec![team],
        None if !visible.is_all() => visible.param().split(',').collect(),
        None => Vec::new(),
    };
    // Two walks per team; SQLite takes at most 500 terms in a compound
    // SELECT. A member of more teams than this reads the range, fenced.
    if teams.is_empty() || teams.len() > MAX_TEAM_WALKS {
        let sql = format!(
            "SELECT {CALL_COLUMNS} FROM call_logs WHERE {conditions} ORDER BY id DESC LIMIT ${limit}"
        );
        return (sql, values);
    }
    let mut branches = Vec::with_capacity(teams.len() * 2);
    for team in teams {
        values.push(Value::Text(Some(team)));
        let team = values.len();
        for column in ["consumer_team", "provider_team"] {
            branches.push(format!(
                "SELECT id FROM (SELECT id FROM call_logs WHERE {column} = ${team} AND {conditions} \
                 ORDER BY id DESC LIMIT ${limit}) AS b{}",
                branches.len()
            ));
        }
    }
    let sql = format!(
        "SELECT {CALL_COLUMNS} FROM call_logs WHERE id IN ({}) ORDER BY id DESC LIMIT ${limit}",
        branches.join(" UNION ")
    );
    (sql, values)
}

/// Binds `values` in order.
fn bind_values<'q>(
    mut query: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>,
    values: Vec<Value<'q>>,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments> {
    for value in values {
        query = match value {
            Value::Text(text) => query.bind(text),
            Value::Number(number) => query.bind(number),
        };
    }
    query
}

/// The WHERE clause of [`Store::rollups`] (`$1` and `$2` the range, `$3`
/// the slot width) and its values.
///
/// Only the filters given are written in. Teams (the filter's, or a
/// tenant's) are equalities on each side, which the team indexes serve
/// (`rollups_*_provider`, `rollups_*_consumer`, with the bucket): a
/// tenant reads its own rows, not every team's rows of the range. A
/// member of more than [`MAX_TEAM_WALKS`] teams is fenced as before.
fn rollups_conditions<'a>(query: &RollupQuery<'a>) -> (String, Vec<Value<'a>>) {
    let mut values = vec![
        Value::Number(Some(query.from_ms)),
        Value::Number(Some(query.to_ms)),
        Value::Number(Some(query.interval_ms.max(1))),
    ];
    let mut conditions = String::from("bucket_ms >= $1 AND bucket_ms < $2");
    add_texts(
        &mut conditions,
        &mut values,
        &[
            ("service = ?", query.service),
            ("app = ?", query.app),
            ("(consumer_team = ? OR provider_team = ?)", query.team),
        ],
    );
    if query.visible.is_all() {
        return (conditions, values);
    }
    let teams: Vec<&'a str> = query
        .visible
        .param()
        .split(',')
        .filter(|team| !team.is_empty())
        .collect();
    if teams.len() > MAX_TEAM_WALKS {
        add_condition(
            &mut conditions,
            &mut values,
            "((consumer_team <> '' AND (',' || ? || ',') LIKE ('%,' || consumer_team || ',%')) \
             OR (provider_team <> '' AND (',' || ? || ',') LIKE ('%,' || provider_team || ',%')))",
            Value::Text(Some(query.visible.param())),
        );
        return (conditions, values);
    }
    if teams.is_empty() {
        conditions.push_str(" AND 1 = 0");
        return (conditions, values);
    }
    let mut list = String::new();
    for team in teams {
        values.push(Value::Text(Some(team)));
        if !list.is_empty() {
            list.push_str(", ");
        }
        list.push_str(&format!("${}", values.len()));
    }
    conditions.push_str(&format!(
        " AND (consumer_team IN ({list}) OR provider_team IN ({list}))"
    ));
    (conditions, values)
}

/// [`Store::rollups`] on SQLite: the same statement on a read connection
/// of the store's own ([`crate::direct::Direct::reader`]), in a blocking
/// task, columns read by position. Every `$N` of the statement (the range
/// and slot, then each filter's value, [`add_condition`]) becomes `?N`,
/// which SQLite binds at index N exactly: the values bind by position.
/// No `$` appears in the statement otherwise (column names and fixed
/// fragments only).
async fn rollups_sqlite(
    direct: &Arc<crate::direct::Direct>,
    sql: String,
    values: &[Value<'_>],
    from_ms: i64,
    interval_ms: i64,
) -> Result<Vec<RollupSlot>> {
    enum Owned {
        Text(Option<String>),
        Number(Option<i64>),
    }
    let sql = sql.replace('$', "?");
    let values: Vec<Owned> = values
        .iter()
        .map(|value| match value {
            Value::Text(text) => Owned::Text(text.map(str::to_owned)),
            Value::Number(number) => Owned::Number(*number),
        })
        .collect();
    let direct = direct.clone();
    let read = move || -> rusqlite::Result<Vec<RollupSlot>> {
        let connection = direct.reader()?;
        let mut statement = connection.prepare(&sql)?;
        for (index, value) in values.iter().enumerate() {
            match value {
                Owned::Text(text) => statement.raw_bind_parameter(index + 1, text.as_deref())?,
                Owned::Number(number) => statement.raw_bind_parameter(index + 1, number)?,
            }
        }
        let mut rows = statement.raw_query();
        let mut slots = Vec::new();
        while let Some(row) = rows.next()? {
            // slot, grp, status, code, then SUMMED, then h0..h15.
            let sum = |index: usize| {
                row.get::<_, Option<i64>>(4 + index)
                    .map(Option::unwrap_or_default)
            };
            let mut latency_buckets = [0u64; LATENCY_BUCKET_COUNT];
            for (index, bucket) in latency_buckets.iter_mut().enumerate() {
                *bucket = u64::try_from(sum(SUMMED.len() + index)?).unwrap_or(0);
            }
            slots.push(RollupSlot {
                start_ms: from_ms + row.get::<_, i64>(0)? * interval_ms.max(1),
                group: row.get::<_, Option<String>>(1)?.unwrap_or_default(),
                status: row.get(2)?,
                code: row.get(3)?,
                values: RollupValues {
                    requests: sum(0)?,
                    latency_sum_us: sum(1)?,
                    upstream_sum_us: sum(2)?,
                    bytes_in: sum(3)?,
                    bytes_out: sum(4)?,
                    input_tokens: sum(5)?,
                    output_tokens: sum(6)?,
                    cost_nanos: sum(7)?,
                    latency_buckets,
                },
            });
        }
        Ok(slots)
    };
    tokio::task::spawn_blocking(read)
        .await
        .map_err(|error| StoreError::Sqlite(format!("the analytics read failed: {error}")))?
        .map_err(StoreError::from)
}

/// [`Store::write_calls`] on SQLite.
fn write_sqlite(connection: &mut rusqlite::Connection, batch: &CallBatch) -> rusqlite::Result<()> {
    let tx = connection.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    for row in &batch.calls {
        if let Some(bodies) = &row.entry.bodies {
            let mut statement = tx.prepare_cached(bodies_statement(Backend::Sqlite))?;
            bind_all(&mut statement, body_values(&row.id, bodies))?;
            statement.raw_execute()?;
        }
    }
    let mut rest = batch.calls.as_slice();
    while !rest.is_empty() {
        let size = crate::insert_size(rest.len());
        let (chunk, tail) = rest.split_at(crate::INSERT_ROWS[size]);
        // A statement from rusqlite's cache comes with every parameter
        // cleared (NULL), as a new one does, and each is bound once below:
        // the empty fields (most of a call's) need no binding.
        let mut statement = tx.prepare_cached(insert_statement(Backend::Sqlite, size))?;
        for (n, row) in chunk.iter().enumerate() {
            for (column, value) in values(row).into_iter().enumerate() {
                if !value.is_null() {
                    bind(&mut statement, n * CALL_VALUES + column + 1, value)?;
                }
            }
        }
        statement.raw_execute()?;
        rest = tail;
    }
    for (granularity, rows) in [
        (Granularity::Minute, &batch.minute),
        (Granularity::Hour, &batch.hour),
        (Granularity::Day, &batch.day),
    ] {
        let mut statement = tx.prepare_cached(rollup_statement(Backend::Sqlite, granularity))?;
        for (key, values) in rows {
            bind_all(&mut statement, rollup_values(key, values))?;
            statement.raw_execute()?;
        }
    }
    tx.commit()
}

/// Binds `value` as the statement's parameter `index` (from 1).
fn bind(
    statement: &mut rusqlite::Statement<'_>,
    index: usize,
    value: Value<'_>,
) -> rusqlite::Result<()> {
    match value {
        Value::Text(text) => statement.raw_bind_parameter(index, text.map(without_nul)),
        Value::Number(number) => statement.raw_bind_parameter(index, number),
    }
}

fn bind_all<const N: usize>(
    statement: &mut rusqlite::Statement<'_>,
    values: [Value<'_>; N],
) -> rusqlite::Result<()> {
    for (index, value) in values.into_iter().enumerate() {
        bind(statement, index + 1, value)?;
    }
    Ok(())
}

/// Adds `value` to sqlx arguments.
fn add(arguments: &mut sqlx::any::AnyArguments, value: Value<'_>) -> Result<()> {
    match value {
        Value::Text(text) => match text.map(without_nul) {
            Some(Cow::Owned(text)) => arguments.add(text),
            _ => arguments.add(text),
        },
        Value::Number(number) => arguments.add(number),
    }
    .map_err(sqlx::Error::Encode)?;
    Ok(())
}

fn add_all<const N: usize>(values: [Value<'_>; N]) -> Result<sqlx::any::AnyArguments> {
    let mut arguments = sqlx::any::AnyArguments::default();
    arguments.reserve(N, 0);
    for value in values {
        add(&mut arguments, value)?;
    }
    Ok(arguments)
}

/// PostgreSQL text cannot hold NUL (HTTP heads cannot carry one either):
/// dropped, not refused, on both backends alike.
fn without_nul(text: &str) -> Cow<'_, str> {
    if text.contains('\0') {
        Cow::Owned(text.replace('\0', ""))
    } else {
        Cow::Borrowed(text)
    }
}

impl WriteTx {
    /// [`Store::write_calls`]' calls, through the pool.
    async fn insert_calls(&mut self, rows: &[Box<CallRow>]) -> Result<()> {
        for row in rows {
            if let Some(bodies) = &row.entry.bodies {
                let arguments = add_all(body_values(&row.id, bodies))?;
                sqlx::query_with(bodies_statement(self.backend), arguments)
                    .execute(&mut *self.tx)
                    .await?;
            }
        }
        let mut rest = rows;
        while !rest.is_empty() {
            let size = crate::insert_size(rest.len());
            let (chunk, tail) = rest.split_at(crate::INSERT_ROWS[size]);
            // The arguments are gathered first, sized once: binding one by
            // one moves the whole query at each of the 1,920 values.
            let mut arguments = sqlx::any::AnyArguments::default();
            arguments.reserve(chunk.len() * CALL_VALUES, 0);
            for row in chunk {
                for value in values(row) {
                    add(&mut arguments, value)?;
                }
            }
            sqlx::query_with(insert_statement(self.backend, size), arguments)
                .execute(&mut *self.tx)
                .await?;
            rest = tail;
        }
        Ok(())
    }

    /// [`Store::write_calls`]' additions to the rollups of `granularity`,
    /// through the pool.
    async fn add_rollups(
        &mut self,
        granularity: Granularity,
        rows: &[(RollupKey, RollupValues)],
    ) -> Result<()> {
        for (key, values) in rows {
            let arguments = add_all(rollup_values(key, values))?;
            sqlx::query_with(rollup_statement(self.backend, granularity), arguments)
                .execute(&mut *self.tx)
                .await?;
        }
        Ok(())
    }
}

impl Store {
    /// A page of the call log, newest first, after `before` (a row id).
    pub async fn calls(
        &self,
        visible: &Visible,
        filter: &CallFilter<'_>,
        before: Option<&str>,
        limit: usize,
    ) -> Result<Page<CallRow>> {
        // Time bounds as id bounds: the primary key does both.
        let floor = id_floor(filter.from_ms.unwrap_or(0));
        let mut ceiling = id_floor(filter.to_ms.unwrap_or(i64::MAX >> 16));
        if let Some(before) = before
            && before < ceiling.as_str()
        {
            ceiling = before.to_owned();
        }
        let (sql, values) = calls_query(visible, filter, &floor, &ceiling, limit);
        // Audited: only this module's fixed fragments are formatted in;
        // every value is bound.
        let rows = bind_values(sqlx::query(sqlx::AssertSqlSafe(sql)), values)
            .fetch_all(&self.pool)
            .await?;
        let items = rows.iter().map(call_from).collect::<Result<Vec<_>>>()?;
        Ok(page_of(items, limit, |row| &row.id))
    }

    /// The calls of `app` (of `team`) that carried `request_id` (clients
    /// may reuse one), newest first, at most `limit`.
    pub async fn calls_by_request(
        &self,
        request_id: &str,
        team: &str,
        app: &str,
        limit: i64,
    ) -> Result<Vec<CallRow>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(by_request_sql()))
            .bind(request_id)
            .bind(team)
            .bind(app)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(call_from).collect()
    }

    /// One call by its row id, with its bodies when they were logged.
    pub async fn call(&self, id: &str) -> Result<Option<CallRow>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {CALL_COLUMNS} FROM call_logs WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        let Some(mut call) = row.as_ref().map(call_from).transpose()? else {
            return Ok(None);
        };
        let bodies = sqlx::query("SELECT * FROM call_bodies WHERE call_id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        if let Some(row) = bodies {
            let bytes = |column: &str| count(&row, column);
            call.entry.bodies = Some(Box::new(domain::calls::CallBodies {
                request_headers: text(&row, "request_headers")?,
                request_body: opt_text(&row, "request_body")?,
                request_bytes: bytes("request_bytes")?,
                response_headers: text(&row, "response_headers")?,
                response_body: opt_text(&row, "response_body")?,
                response_bytes: bytes("response_bytes")?,
            }));
        }
        Ok(Some(call))
    }

    /// Deletes up to `limit` calls made before `at_ms` (with their
    /// bodies); returns how many calls.
    pub async fn delete_calls_before(&self, at_ms: i64, limit: i64) -> Result<u64> {
        let mut tx = self.begin().await?;
        sqlx::query(
            "DELETE FROM call_bodies WHERE call_id IN \
             (SELECT call_id FROM call_bodies WHERE call_id < $1 ORDER BY call_id LIMIT $2)",
        )
        .bind(id_floor(at_ms))
        .bind(limit)
        .execute(&mut *tx.tx)
        .await?;
        let done = sqlx::query(
            "DELETE FROM call_logs WHERE id IN \
             (SELECT id FROM call_logs WHERE id < $1 ORDER BY id LIMIT $2)",
        )
        .bind(id_floor(at_ms))
        .bind(limit)
        .execute(&mut *tx.tx)
        .await?;
        tx.commit().await?;
        Ok(done.rows_affected())
    }

    /// Deletes rollup rows of buckets before `bucket_ms`; returns how many.
    pub async fn delete_rollups_before(
        &self,
        granularity: Granularity,
        bucket_ms: i64,
    ) -> Result<u64> {
        let mut tx = self.begin().await?;
        let done = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DELETE FROM {} WHERE bucket_ms < $1",
            granularity.table()
        )))
        .bind(bucket_ms)
        .execute(&mut *tx.tx)
        .await?;
        tx.commit().await?;
        Ok(done.rows_affected())
    }

    /// Sums the rollups per slot of `query.interval_ms`, group, status and
    /// code, in slot order.
    pub async fn rollups(&self, query: &RollupQuery<'_>) -> Result<Vec<RollupSlot>> {
        let group = query.group_by.map_or("''", GroupBy::column);
        let sum = |column: &str| format!("CAST(SUM({column}) AS BIGINT) AS {column}");
        let mut sums = SUMMED
            .iter()
            .map(|c| {
                if query.figures.includes(c) {
                    sum(c)
                } else {
                    format!("CAST(0 AS BIGINT) AS {c}")
                }
            })
            .collect::<Vec<_>>();
        sums.extend((0..LATENCY_BUCKET_COUNT).map(|i| {
            if query.latency {
                sum(&format!("h{i}"))
            } else {
                format!("CAST(0 AS BIGINT) AS h{i}")
            }
        }));
        let (conditions, values) = rollups_conditions(query);
        let sql = format!(
            "SELECT (bucket_ms - $1) / $3 AS slot, {group} AS grp, status, code, {} FROM {} \
             WHERE {conditions} GROUP BY slot, grp, status, code ORDER BY slot, grp",
            sums.join(", "),
            query.granularity.table(),
        );
        if let Some(direct) = &self.direct {
            return rollups_sqlite(direct, sql, &values, query.from_ms, query.interval_ms).await;
        }
        // Audited: only this module's column names and fixed fragments are
        // formatted in; every value is bound.
        let rows = bind_values(sqlx::query(sqlx::AssertSqlSafe(sql)), values)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| {
                let mut latency_buckets = [0u64; LATENCY_BUCKET_COUNT];
                for (index, bucket) in latency_buckets.iter_mut().enumerate() {
                    *bucket = u64::try_from(int(row, &format!("h{index}"))?).unwrap_or(0);
                }
                Ok(RollupSlot {
                    start_ms: query.from_ms + int(row, "slot")? * query.interval_ms.max(1),
                    group: opt_text(row, "grp")?.unwrap_or_default(),
                    status: int(row, "status")?,
                    code: text(row, "code")?,
                    values: RollupValues {
                        requests: int(row, "requests")?,
                        latency_sum_us: int(row, "latency_sum_us")?,
                        upstream_sum_us: int(row, "upstream_sum_us")?,
                        bytes_in: int(row, "bytes_in")?,
                        bytes_out: int(row, "bytes_out")?,
                        input_tokens: int(row, "input_tokens")?,
                        output_tokens: int(row, "output_tokens")?,
                        cost_nanos: int(row, "cost_nanos")?,
                        latency_buckets,
                    },
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A migrated SQLite store in a temporary directory (kept while the
    /// directory lives).
    async fn migrated_sqlite() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&format!("sqlite://{}/t.db", dir.path().display()))
            .await
            .unwrap();
        store.migrate().await.unwrap();
        (dir, store)
    }

    /// The EXPLAIN QUERY PLAN of `sql` on `store`, one line per step.
    async fn plan_of(store: &Store, sql: &str, parameters: usize) -> String {
        let mut query = sqlx::query(sqlx::AssertSqlSafe(format!("EXPLAIN QUERY PLAN {sql}")));
        for _ in 0..parameters {
            query = query.bind("x");
        }
        let plan: Vec<String> = query
            .fetch_all(store.pool())
            .await
            .unwrap()
            .iter()
            .map(|row| row.try_get::<String, _>(3).unwrap())
            .collect();
        plan.join("\n")
    }

    /// Call log queries read along an index that bounds them: lookups by
    /// request id through its index, also beside a team's equality (whose
    /// index would read all of the team's calls); a team's or a tenant's
    /// calls along the team indexes, never the whole time range.
    #[tokio::test]
    async fn call_log_queries_take_the_indexes_that_bound_them() {
        let (_dir, store) = migrated_sqlite().await;
        let everyone = Visible::all();
        let acme = Visible::teams(["acme", "wco"]);
        let by_request = CallFilter {
            request_id: Some("r"),
            team: Some("acme"),
            ..Default::default()
        };
        for (sql, values) in [
            (by_request_sql(), 4),
            {
                let (sql, values) = calls_query(&everyone, &by_request, "0", "z", 10);
                (sql, values.len())
            },
            {
                let (sql, values) = calls_query(&acme, &by_request, "0", "z", 10);
                (sql, values.len())
            },
        ] {
            let plan = plan_of(&store, &sql, values).await;
            assert!(
                plan.contains("USING INDEX call_logs_request"),
                "{sql}\n{plan}"
            );
        }
        let by_team = CallFilter {
            team: Some("acme"),
            app: Some("bot"),
            ..Default::default()
        };
        for (visible, filter) in [
            (&everyone, &by_team),
            (&acme, &CallFilter::default()),
            (&acme, &by_team),
        ] {
            let (sql, values) = calls_query(visible, filter, "0", "z", 10);
            let plan = plan_of(&store, &sql, values.len()).await;
            assert!(
                plan.contains("INDEX call_logs_consumer (consumer_team=? AND id>? AND id<?)")
                    && plan
                        .contains("INDEX call_logs_provider (provider_team=? AND id>? AND id<?)"),
                "{sql}\n{plan}"
            );
            assert!(!plan.contains("SCAN call_logs"), "{sql}\n{plan}");
            assert!(
                !plan.contains("sqlite_autoindex_call_logs_1 (id>?"),
                "{sql}\n{plan}"
            );
        }
        // A member of many teams: still one statement SQLite takes.
        for count in [MAX_TEAM_WALKS, MAX_TEAM_WALKS + 1, 400] {
            let slugs: Vec<String> = (0..count).map(|n| format!("team-{n}")).collect();
            let many = Visible::teams(slugs.iter().map(String::as_str));
            let (sql, values) = calls_query(&many, &CallFilter::default(), "0", "z", 10);
            let plan = plan_of(&store, &sql, values.len()).await;
            assert!(!plan.is_empty(), "{count} teams");
        }
        store.close().await;
    }

    /// Analytics for a tenant or a team read that team's rows along the
    /// team indexes, never every row of the range.
    #[tokio::test]
    async fn rollup_queries_for_teams_take_the_team_indexes() {
        let (_dir, store) = migrated_sqlite().await;
        let everyone = Visible::all();
        let acme = Visible::teams(["acme", "wco"]);
        for granularity in [Granularity::Minute, Granularity::Hour] {
            let table = granularity.table();
            for (visible, team) in [
                (&everyone, Some("acme")),
                (&acme, None),
                (&acme, Some("acme")),
            ] {
                let query = RollupQuery {
                    granularity,
                    from_ms: 0,
                    to_ms: 1,
                    interval_ms: 1,
                    group_by: None,
                    visible,
                    service: None,
                    app: Some("bot"),
                    team,
                    latency: false,
                    figures: Figures::All,
                };
                let (conditions, values) = rollups_conditions(&query);
                let sql = format!("SELECT requests FROM {table} WHERE {conditions}");
                let plan = plan_of(&store, &sql, values.len()).await;
                for side in ["consumer", "provider"] {
                    assert!(
                        plan.contains(&format!(
                            "INDEX {table}_{side} ({side}_team=? AND bucket_ms>? AND bucket_ms<?)"
                        )),
                        "{sql}\n{plan}"
                    );
                }
                assert!(!plan.contains(&format!("SCAN {table}")), "{sql}\n{plan}");
            }
        }
        store.close().await;
    }

    #[test]
    fn call_ids_sort_by_time() {
        let early = call_id(1_700_000_000_000, u128::MAX);
        let later = call_id(1_700_000_000_001, 0);
        assert!(early < later, "{early} !< {later}");
        assert!(id_floor(1_700_000_000_001) <= later);
        assert!(id_floor(1_700_000_000_001) > early);
        let parsed = uuid::Uuid::parse_str(&early).expect("a uuid");
        assert_eq!(parsed.get_version_num(), 7);
    }
}
