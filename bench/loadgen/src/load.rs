//! Open-loop fixed-rate load.
//!
//! Request `i` is scheduled at `start + i / rate`. A pacer task, woken by a
//! one-shot `timerfd` armed for the next slot (tokio's own timer only has
//! millisecond resolution),
//! releases one semaphore permit per request as its scheduled time passes; the
//! connection tasks (one per keep-alive connection) take permits in order, claim
//! the next request index and send it. A connection that is still busy simply
//! does not take the next permit, so requests go to whichever connection is
//! free. If every connection is busy the request waits, and because latency is
//! measured from the *scheduled* time that wait is counted (no coordinated
//! omission).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http::Uri;
use rustix::time::{
    Itimerspec, TimerfdClockId, TimerfdFlags, TimerfdTimerFlags, Timespec, timerfd_create,
    timerfd_settime,
};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::sync::Semaphore;

use crate::BoxError;
use crate::target::Target;
use crate::wire::{self, Conn};

pub struct LoadConfig {
    pub url: Uri,
    pub rate: f64,
    pub duration: Duration,
    pub warmup: Duration,
    pub connections: usize,
    pub threads: usize,
    pub timeout: Duration,
    /// `Authorization` header value for every request.
    pub authorization: Option<String>,
    /// When set, every request is a POST with this body (and `content_type`).
    pub body: Option<Bytes>,
    pub content_type: String,
}

/// Histograms hold nanoseconds, 1 ns ..= 1 h, 3 significant digits.
const HIST_MAX_NS: u64 = 3_600_000_000_000;
/// The pacer's timer never waits less than this: above 100k req/s, or when it
/// falls behind, several requests are released per wake-up.
const MIN_TICK: Duration = Duration::from_micros(10);

struct Shared {
    permits: Semaphore,
    next: AtomicU64,
    total: u64,
    warmup_slots: u64,
    start: Instant,
    interval_ns: f64,
    /// Past this instant, remaining requests are not sent any more (counted as unsent).
    deadline: Instant,
}

impl Shared {
    fn slot_time(&self, i: u64) -> Instant {
        self.start + Duration::from_nanos((i as f64 * self.interval_ns) as u64)
    }
}

struct Tally {
    sent: u64,
    ok: u64,
    non_2xx: u64,
    failed: u64,
    reconnects: u64,
    /// From the scheduled send time to the end of the response (the figure that counts).
    latency: Histogram<u64>,
    /// From the actual send to the end of the response (excludes the generator's own lag).
    service: Histogram<u64>,
    /// From the scheduled to the actual send: the load generator's own lag.
    lag: Histogram<u64>,
}

impl Tally {
    fn new() -> Result<Self, BoxError> {
        Ok(Self {
            sent: 0,
            ok: 0,
            non_2xx: 0,
            failed: 0,
            reconnects: 0,
            latency: Histogram::new_with_bounds(1, HIST_MAX_NS, 3)?,
            service: Histogram::new_with_bounds(1, HIST_MAX_NS, 3)?,
            lag: Histogram::new_with_bounds(1, HIST_MAX_NS, 3)?,
        })
    }

    fn merge(&mut self, other: &Self) -> Result<(), BoxError> {
        self.sent += other.sent;
        self.ok += other.ok;
        self.non_2xx += other.non_2xx;
        self.failed += other.failed;
        self.reconnects += other.reconnects;
        self.latency.add(&other.latency)?;
        self.service.add(&other.service)?;
        self.lag.add(&other.lag)?;
        Ok(())
    }
}

pub fn run(cfg: &LoadConfig) -> Result<String, BoxError> {
    if !(cfg.rate.is_finite() && cfg.rate > 0.0) {
        return Err("--rate must be a positive number".into());
    }
    if cfg.connections == 0 || cfg.threads == 0 {
        return Err("--connections and --threads must be at least 1".into());
    }
    // One thread (the default) keeps every wake-up inside the thread: the pacer
    // releasing a permit costs no cross-thread unpark.
    let runtime = if cfg.threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(cfg.threads)
            .enable_all()
            .build()?
    };
    runtime.block_on(run_async(cfg))
}

async fn run_async(cfg: &LoadConfig) -> Result<String, BoxError> {
    let mut target = Target::from_uri(&cfg.url)?;
    target.authorization = cfg.authorization.clone();
    target.body = cfg.body.clone();
    target.content_type = cfg.content_type.clone();
    let request: Arc<[u8]> = wire::request_bytes(&target).into();
    let target = Arc::new(target);

    // Open every connection before the clock starts; fail fast if the target is down.
    let mut conns = Vec::with_capacity(cfg.connections);
    for _ in 0..cfg.connections {
        let conn = Conn::open(&target)
            .await
            .map_err(|e| format!("connecting to {}: {e}", target.addr))?;
        conns.push(conn);
    }

    let warmup_slots = (cfg.rate * cfg.warmup.as_secs_f64()).round() as u64;
    let measured_slots = (cfg.rate * cfg.duration.as_secs_f64()).round() as u64;
    let start = Instant::now() + Duration::from_millis(20);
    let shared = Arc::new(Shared {
        permits: Semaphore::new(0),
        next: AtomicU64::new(0),
        total: warmup_slots + measured_slots,
        warmup_slots,
        start,
        interval_ns: 1e9 / cfg.rate,
        deadline: start + cfg.warmup + cfg.duration + cfg.timeout,
    });

    let workers: Vec<_> = conns
        .into_iter()
        .map(|conn| {
            tokio::spawn(worker(
                shared.clone(),
                target.clone(),
                request.clone(),
                conn,
                cfg.timeout,
            ))
        })
        .collect();
    let pacer = tokio::spawn(pace(shared.clone(), cfg.connections));

    let collect = async {
        let mut total = Tally::new()?;
        for handle in workers {
            total.merge(&handle.await??)?;
        }
        pacer.await??;
        Ok::<_, BoxError>(total)
    };
    // Every request is bounded by the deadline plus its timeout; past that
    // something is stuck, and dropping the runtime cancels it.
    let hard_stop = shared.deadline + cfg.timeout + Duration::from_secs(1);
    let total = tokio::time::timeout_at(hard_stop.into(), collect)
        .await
        .map_err(|_| "the run did not finish in time (a task is stuck)")??;

    let errors = total.non_2xx + total.failed + (measured_slots - total.sent);
    let lat = &total.latency;
    let svc = &total.service;
    let lag = &total.lag;
    let us = |ns: u64| ns as f64 / 1000.0;
    Ok(format!(
        concat!(
            "{{\"rate\":{rate},\"duration_s\":{duration},\"warmup_s\":{warmup},",
            "\"connections\":{conns},\"threads\":{threads},",
            "\"scheduled\":{scheduled},\"sent\":{sent},\"ok\":{ok},\"errors\":{errors},",
            "\"non_2xx\":{non_2xx},\"failed\":{failed},\"unsent\":{unsent},\"reconnects\":{reconnects},",
            "\"p50_us\":{p50:.1},\"p90_us\":{p90:.1},\"p99_us\":{p99:.1},\"p999_us\":{p999:.1},",
            "\"max_us\":{max:.1},\"mean_us\":{mean:.1},",
            "\"svc_p50_us\":{svc50:.1},\"svc_p99_us\":{svc99:.1},\"svc_p999_us\":{svc999:.1},",
            "\"lag_p50_us\":{lag50:.1},\"lag_p99_us\":{lag99:.1},\"lag_max_us\":{lagmax:.1}}}"
        ),
        rate = cfg.rate,
        duration = cfg.duration.as_secs_f64(),
        warmup = cfg.warmup.as_secs_f64(),
        conns = cfg.connections,
        threads = cfg.threads,
        scheduled = measured_slots,
        sent = total.sent,
        ok = total.ok,
        errors = errors,
        non_2xx = total.non_2xx,
        failed = total.failed,
        unsent = measured_slots - total.sent,
        reconnects = total.reconnects,
        p50 = us(lat.value_at_quantile(0.5)),
        p90 = us(lat.value_at_quantile(0.9)),
        p99 = us(lat.value_at_quantile(0.99)),
        p999 = us(lat.value_at_quantile(0.999)),
        max = us(lat.max()),
        mean = lat.mean() / 1000.0,
        svc50 = us(svc.value_at_quantile(0.5)),
        svc99 = us(svc.value_at_quantile(0.99)),
        svc999 = us(svc.value_at_quantile(0.999)),
        lag50 = us(lag.value_at_quantile(0.5)),
        lag99 = us(lag.value_at_quantile(0.99)),
        lagmax = us(lag.max()),
    ))
}

/// Releases one permit per request as its scheduled time arrives, then one
/// extra permit per connection task so that every task wakes up and exits.
/// On failure it closes the semaphore, which stops the connection tasks.
async fn pace(shared: Arc<Shared>, wake_all: usize) -> Result<(), BoxError> {
    let result = release_on_schedule(&shared).await;
    match result {
        Ok(()) => shared.permits.add_permits(wake_all),
        Err(_) => shared.permits.close(),
    }
    result
}

async fn release_on_schedule(shared: &Shared) -> Result<(), BoxError> {
    let timer = timerfd_create(
        TimerfdClockId::Monotonic,
        TimerfdFlags::NONBLOCK | TimerfdFlags::CLOEXEC,
    )?;
    // `with_interest` is deprecated because an arbitrary `AsRawFd` may close or
    // swap its descriptor; an `OwnedFd` that we own and never touch cannot.
    #[allow(deprecated)]
    let timer = AsyncFd::with_interest(timer, Interest::READABLE)?;
    let mut released: u64 = 0;
    loop {
        let now = Instant::now();
        if now >= shared.start {
            let elapsed_ns = now.duration_since(shared.start).as_nanos() as f64;
            let due = ((elapsed_ns / shared.interval_ns) as u64 + 1).min(shared.total);
            if due > released {
                shared.permits.add_permits((due - released) as usize);
                released = due;
            }
        }
        if released >= shared.total {
            return Ok(());
        }
        // One-shot, re-armed from the clock every time: a periodic timer would
        // drift against `Instant` (seen on VMs) and release slots a tick late.
        let wait = shared
            .slot_time(released)
            .saturating_duration_since(now)
            .max(MIN_TICK);
        timerfd_settime(
            timer.get_ref(),
            TimerfdTimerFlags::empty(),
            &Itimerspec {
                it_interval: Timespec::try_from(Duration::ZERO)?,
                it_value: Timespec::try_from(wait)?,
            },
        )?;
        loop {
            let mut ready = timer.readable().await?;
            let mut expirations = [0u8; 8];
            match ready.try_io(|fd| {
                rustix::io::read(fd.get_ref(), &mut expirations[..]).map_err(std::io::Error::from)
            }) {
                Ok(read) => {
                    read?;
                    break;
                }
                Err(_would_block) => continue,
            }
        }
    }
}

async fn worker(
    shared: Arc<Shared>,
    target: Arc<Target>,
    request: Arc<[u8]>,
    conn: Conn,
    timeout: Duration,
) -> Result<Tally, BoxError> {
    let mut tally = Tally::new()?;
    let mut conn = Some(conn);
    loop {
        match shared.permits.acquire().await {
            Ok(permit) => permit.forget(),
            Err(_) => break,
        }
        let i = shared.next.fetch_add(1, Ordering::Relaxed);
        if i >= shared.total {
            break;
        }
        let measured = i >= shared.warmup_slots;
        let scheduled = shared.slot_time(i);
        if Instant::now() > shared.deadline {
            // Too far behind: leave it unsent (reported as an error).
            continue;
        }
        if conn.as_ref().is_none_or(|c| !c.reusable()) {
            tally.reconnects += 1;
            conn = Conn::open(&target).await.ok();
        }
        let Some(open) = conn.as_mut() else {
            if measured {
                tally.sent += 1;
                tally.failed += 1;
            }
            continue;
        };
        let sent_at = Instant::now();
        let outcome = tokio::time::timeout(timeout, open.exchange(&request)).await;
        let done = Instant::now();
        let healthy = matches!(outcome, Ok(Ok(_)));
        if measured {
            tally.sent += 1;
            tally
                .lag
                .saturating_record(nanos(sent_at.saturating_duration_since(scheduled)));
            match outcome {
                Ok(Ok(status)) if (200..300).contains(&status) => {
                    tally.ok += 1;
                    tally
                        .latency
                        .saturating_record(nanos(done.saturating_duration_since(scheduled)));
                    tally.service.saturating_record(nanos(done - sent_at));
                }
                Ok(Ok(_)) => tally.non_2xx += 1,
                Ok(Err(_)) | Err(_) => tally.failed += 1,
            }
        }
        if !healthy {
            // A timed-out or failed exchange leaves the connection in an unknown state.
            conn = None;
        }
    }
    Ok(tally)
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX).max(1)
}
