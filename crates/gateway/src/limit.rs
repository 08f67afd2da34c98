//! Rate limits: sliding-window counters per window (second, minute, hour,
//! day) plus a bound on requests in flight, for one subscription, app or
//! route. Each [`Limiter`] has its own small lock; nothing is shared by all
//! requests. The [`LimiterRegistry`] keeps counters across configuration
//! reloads, so a reload never resets a caller's budget; when a subject's
//! limits change, each window that stays (same period) and the requests
//! in flight carry over to the new limits.
//!
//! The sliding window counter (as in Cloudflare's and nginx's): the
//! estimate for "the last `period`" is the current fixed window's count
//! plus the previous window's count weighted by how much of it still
//! overlaps. A request is admitted while the estimate stays within the
//! limit, so no fixed window ever admits more than the limit.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Weak};

use domain::access::RateLimit;

#[derive(Debug, Clone, Copy, Default)]
struct WindowState {
    /// Start of the current fixed window, epoch ms (a multiple of the period).
    start_ms: u64,
    /// The previous window's total.
    previous: u64,
    /// This node's admissions in this window not yet sent to the shared
    /// store, and those already sent.
    unsynced: u64,
    synced: u64,
    /// Other nodes' admissions in this window, as last read.
    remote: u64,
}

impl WindowState {
    /// This window's admissions: this node's plus, with shared counters,
    /// the other nodes' as last synced.
    fn current(&self) -> u64 {
        self.synced + self.unsynced + self.remote
    }
}

#[derive(Debug)]
struct Window {
    limit: u64,
    period_ms: u64,
    name: &'static str,
}

/// The counters of one subject (a subscription, an app or a route).
#[derive(Debug)]
pub struct Limiter {
    /// Which subject, for policy names: `plan`, `app` or `route`.
    pub scope: &'static str,
    windows: Box<[Window]>,
    states: Mutex<Box<[WindowState]>>,
    concurrent_max: Option<u32>,
    /// Shared with the limiters this one replaced or is replaced by (the
    /// subject's limits changed): permits taken under either free it.
    in_flight: Arc<AtomicU32>,
    /// Other nodes' requests in flight, as last read (shared counters).
    remote_in_flight: AtomicU32,
    /// This limiter's part of `RateLimit-Policy` (empty without windows),
    /// written once.
    policy: Box<str>,
}

/// What a limiter says about one request.
#[derive(Debug, Clone, Copy)]
pub struct Quota {
    pub name: &'static str,
    pub scope: &'static str,
    pub limit: u64,
    pub window_s: u64,
    pub remaining: u64,
    /// Seconds until the current window ends.
    pub reset_s: u64,
}

/// A refusal: which quota ran out and how long to wait.
#[derive(Debug, Clone, Copy)]
pub struct Exceeded {
    pub quota: Quota,
    pub retry_after_s: u64,
    /// The bound on requests in flight was hit (not a window).
    pub concurrency: bool,
}

fn roll(state: &mut WindowState, period_ms: u64, now_ms: u64) {
    let start = now_ms - now_ms % period_ms;
    if state.start_ms != start {
        let previous = if state.start_ms + period_ms == start {
            state.current()
        } else {
            0
        };
        *state = WindowState {
            start_ms: start,
            previous,
            ..WindowState::default()
        };
    }
}

/// The estimate of requests in the sliding window, scaled by `period_ms`
/// (so it stays an integer): previous × overlap + current × period.
fn scaled_estimate(state: &WindowState, period_ms: u64, now_ms: u64) -> u128 {
    let elapsed = now_ms - state.start_ms;
    u128::from(state.previous) * u128::from(period_ms - elapsed)
        + u128::from(state.current()) * u128::from(period_ms)
}

impl Window {
    fn quota(&self, scope: &'static str, state: &WindowState, now_ms: u64) -> Quota {
        let period = u128::from(self.period_ms);
        let used = scaled_estimate(state, self.period_ms, now_ms).div_ceil(period);
        let remaining = u64::try_from(u128::from(self.limit).saturating_sub(used)).unwrap_or(0);
        Quota {
            name: self.name,
            scope,
            limit: self.limit,
            window_s: self.period_ms / 1000,
            remaining,
            // None left: when one more fits (a sliding window has room
            // again before or after its fixed window ends), as the next
            // call's `Retry-After` would say; a client that waits `t`
            // is then admitted.
            reset_s: if remaining == 0 {
                self.wait_s(state, now_ms, 1)
            } else {
                (state.start_ms + self.period_ms - now_ms).div_ceil(1000)
            },
        }
    }

    /// Seconds until one more request would be admitted.
    /// Seconds until `count` more units fit (a request is one; an AI call
    /// its tokens): telling a caller to retry sooner would only earn it
    /// another 429.
    fn wait_s(&self, state: &WindowState, now_ms: u64, count: u64) -> u64 {
        let period = self.period_ms;
        let end = state.start_ms + period;
        let current = state.current();
        if current.saturating_add(count) > self.limit {
            // Next window: the estimate is current × overlap, which must
            // fall to limit - count for `count` more to fit.
            let needed = u128::from(self.limit.saturating_sub(count)) * u128::from(period);
            let into_next = if current == 0 {
                0
            } else {
                let overlap_max = needed / u128::from(current);
                u64::try_from(u128::from(period).saturating_sub(overlap_max)).unwrap_or(period)
            };
            return (end - now_ms + into_next).div_ceil(1000).max(1);
        }
        // This window: the previous window's weight has to drop until
        // previous × (period - elapsed) ≤ (limit - current - count) × period.
        let room = u128::from(self.limit - current - count) * u128::from(period);
        let overlap_max = if state.previous == 0 {
            u128::from(period)
        } else {
            room / u128::from(state.previous)
        };
        let elapsed_needed = u128::from(period).saturating_sub(overlap_max);
        let elapsed = u128::from(now_ms - state.start_ms);
        let wait_ms = u64::try_from(elapsed_needed.saturating_sub(elapsed)).unwrap_or(period);
        wait_ms.div_ceil(1000).max(1)
    }
}

impl Limiter {
    pub fn new(scope: &'static str, limits: &[RateLimit], concurrent_max: Option<u32>) -> Self {
        let windows: Box<[Window]> = limits
            .iter()
            .map(|limit| Window {
                limit: limit.requests,
                period_ms: limit.per.seconds() * 1000,
                name: limit.per.as_str(),
            })
            .collect();
        let mut items: Vec<String> = windows
            .iter()
            .map(|w| {
                format!(
                    "\"{scope}-{}\";q={};w={}",
                    w.name,
                    w.limit,
                    w.period_ms / 1000
                )
            })
            .collect();
        // Requests in flight, in the draft's own quota unit, so that the
        // `RateLimit` item of a concurrency refusal names a policy.
        if let Some(max) = concurrent_max {
            items.push(format!(
                "\"{scope}-concurrent\";q={max};qu=\"concurrent-requests\""
            ));
        }
        let policy = items.join(", ").into_boxed_str();
        Self {
            scope,
            states: Mutex::new(vec![WindowState::default(); windows.len()].into_boxed_slice()),
            windows,
            concurrent_max,
            in_flight: Arc::new(AtomicU32::new(0)),
            remote_in_flight: AtomicU32::new(0),
            policy,
        }
    }

    /// A limiter with new limits for the subject of `previous`: the
    /// windows of a period both have keep their counts, and the requests
    /// in flight stay counted (so changing limits never hands out a fresh
    /// allowance).
    fn succeeding(previous: &Limiter, limits: &[RateLimit], concurrent_max: Option<u32>) -> Self {
        let mut next = Self::new(previous.scope, limits, concurrent_max);
        next.in_flight = previous.in_flight.clone();
        next.remote_in_flight.store(
            previous.remote_in_flight.load(Ordering::Acquire),
            Ordering::Release,
        );
        let old = previous
            .states
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let states = next
            .states
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (window, state) in next.windows.iter().zip(states.iter_mut()) {
            if let Some((_, kept)) = previous
                .windows
                .iter()
                .zip(old.iter())
                .find(|(w, _)| w.period_ms == window.period_ms)
            {
                *state = *kept;
            }
        }
        drop(old);
        next
    }

    /// Admits one request at `now_ms` or says which window is full. On
    /// admission every window counts it; on refusal none does. Returns the
    /// tightest window after counting.
    pub fn admit(&self, now_ms: u64) -> Result<Option<Quota>, Exceeded> {
        self.admit_n(now_ms, 1)
    }

    /// Admits `count` units (tokens, for a tokens-per-minute limiter) at
    /// once: counted in every window, or refused by the first that has no
    /// room for them.
    pub fn admit_n(&self, now_ms: u64, count: u64) -> Result<Option<Quota>, Exceeded> {
        let mut states = self
            .states
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (window, state) in self.windows.iter().zip(states.iter_mut()) {
            roll(state, window.period_ms, now_ms);
            let next = WindowState {
                unsynced: state.unsynced + count,
                ..*state
            };
            let allowed = scaled_estimate(&next, window.period_ms, now_ms)
                <= u128::from(window.limit) * u128::from(window.period_ms);
            if !allowed {
                return Err(Exceeded {
                    quota: window.quota(self.scope, state, now_ms),
                    retry_after_s: window.wait_s(state, now_ms, count),
                    concurrency: false,
                });
            }
        }
        let mut tightest: Option<Quota> = None;
        for (window, state) in self.windows.iter().zip(states.iter_mut()) {
            state.unsynced += count;
            let quota = window.quota(self.scope, state, now_ms);
            if tightest.is_none_or(|t| quota.remaining < t.remaining) {
                tightest = Some(quota);
            }
        }
        Ok(tightest)
    }

    /// Counts `count` more units without checking (tokens produced by a
    /// call already admitted).
    pub fn add(&self, now_ms: u64, count: u64) {
        let mut states = self
            .states
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (window, state) in self.windows.iter().zip(states.iter_mut()) {
            roll(state, window.period_ms, now_ms);
            state.unsynced += count;
        }
    }

    /// Takes back an admission counted at `now_ms` (a later limiter
    /// refused the request).
    pub fn refund(&self, now_ms: u64) {
        let mut states = self
            .states
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (window, state) in self.windows.iter().zip(states.iter_mut()) {
            if state.start_ms == now_ms - now_ms % window.period_ms && state.unsynced > 0 {
                state.unsynced -= 1;
            }
        }
    }

    /// Takes a slot among the requests in flight, if bounded; with the
    /// bound's quota after taking it.
    pub fn enter(self: &Arc<Self>) -> Result<Option<(Permit, Quota)>, Exceeded> {
        let Some(max) = self.concurrent_max else {
            return Ok(None);
        };
        let before = self.in_flight.fetch_add(1, Ordering::AcqRel)
            + self.remote_in_flight.load(Ordering::Acquire);
        if before >= max {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            return Err(Exceeded {
                quota: Quota {
                    name: "concurrent",
                    scope: self.scope,
                    limit: u64::from(max),
                    window_s: 0,
                    remaining: 0,
                    reset_s: 1,
                },
                retry_after_s: 1,
                concurrency: true,
            });
        }
        Ok(Some((
            Permit(self.clone()),
            Quota {
                name: "concurrent",
                scope: self.scope,
                limit: u64::from(max),
                window_s: 0,
                remaining: u64::from(max.saturating_sub(before + 1)),
                reset_s: 1,
            },
        )))
    }

    /// This limiter's policies, as `RateLimit-Policy` lists them (its
    /// windows, then its bound on requests in flight).
    pub fn policy(&self) -> &str {
        &self.policy
    }

    /// Takes this node's unsent admissions of each active window.
    fn take_unsynced(&self, subject: &str, now_ms: u64, out: &mut Vec<SyncItem>) {
        let mut states = self
            .states
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (index, (window, state)) in self.windows.iter().zip(states.iter_mut()).enumerate() {
            roll(state, window.period_ms, now_ms);
            // Idle windows are not synced: their counts are all zero.
            if state.current() == 0 {
                continue;
            }
            out.push(SyncItem {
                subject: subject.to_owned(),
                window: index,
                period_ms: window.period_ms,
                start_ms: state.start_ms,
                delta: state.unsynced,
            });
            state.synced += state.unsynced;
            state.unsynced = 0;
        }
    }

    /// Runs `change` on the state of the window `item` was taken from,
    /// if that window is still the current one.
    fn on_window(&self, item: &SyncItem, change: impl FnOnce(&mut WindowState)) {
        let mut states = self
            .states
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(state) = states.get_mut(item.window)
            && state.start_ms == item.start_ms
        {
            change(state);
        }
    }

    fn same_shape(&self, limits: &[RateLimit], concurrent_max: Option<u32>) -> bool {
        self.concurrent_max == concurrent_max
            && self.windows.len() == limits.len()
            && self
                .windows
                .iter()
                .zip(limits)
                .all(|(w, l)| w.limit == l.requests && w.period_ms == l.per.seconds() * 1000)
    }
}

/// One request in flight; dropping it frees the slot (at the end of the
/// response body).
#[derive(Debug)]
pub struct Permit(Arc<Limiter>);

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One window's count to share between nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncItem {
    /// `subscription:<id>`, `app:<id>` or `route:<id>`.
    pub subject: String,
    pub window: usize,
    pub period_ms: u64,
    pub start_ms: u64,
    /// This node's admissions since the last sync.
    pub delta: u64,
}

/// Keeps limiters across reloads, by subject id. Touched when a snapshot
/// is compiled and by the shared-counter sync, never on a request.
#[derive(Debug, Default)]
pub struct LimiterRegistry {
    limiters: Mutex<HashMap<String, Weak<Limiter>>>,
}

impl LimiterRegistry {
    /// The limiter of `subject` with these limits: the existing one when
    /// its limits did not change (counters carry on), else a new one.
    /// `None` when there is nothing to limit.
    pub fn get(
        &self,
        subject: String,
        scope: &'static str,
        limits: &[RateLimit],
        concurrent_max: Option<u32>,
    ) -> Option<Arc<Limiter>> {
        if limits.is_empty() && concurrent_max.is_none() {
            return None;
        }
        let mut map = self
            .limiters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let existing = map.get(&subject).and_then(Weak::upgrade);
        if let Some(existing) = &existing
            && existing.same_shape(limits, concurrent_max)
        {
            return Some(existing.clone());
        }
        let limiter = Arc::new(match existing {
            Some(previous) if previous.scope == scope => {
                Limiter::succeeding(&previous, limits, concurrent_max)
            }
            _ => Limiter::new(scope, limits, concurrent_max),
        });
        map.insert(subject, Arc::downgrade(&limiter));
        Some(limiter)
    }

    /// This node's new admissions in every active window, to add to the
    /// shared counters; the counts move from unsynced to synced.
    pub fn take_unsynced(&self, now_ms: u64) -> Vec<SyncItem> {
        let map = self
            .limiters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut items = Vec::new();
        for (subject, limiter) in map.iter() {
            if let Some(limiter) = limiter.upgrade() {
                limiter.take_unsynced(subject, now_ms, &mut items);
            }
        }
        items
    }

    /// A sync that failed: `item`'s admissions are sent with the next one
    /// (a node cut off from Redis adds what it admitted meanwhile once it
    /// answers again).
    pub fn give_back(&self, item: &SyncItem) {
        self.on_window(item, |state| {
            let back = item.delta.min(state.synced);
            state.synced -= back;
            state.unsynced += back;
        });
    }

    /// Applies a window's shared total (read back after adding `item`).
    pub fn set_total(&self, item: &SyncItem, total: u64) {
        self.on_window(item, |state| {
            state.remote = total.saturating_sub(state.synced);
        });
    }

    /// Runs `change` on the window of `item`'s limiter, if the limiter is
    /// still in use and the window still current.
    fn on_window(&self, item: &SyncItem, change: impl FnOnce(&mut WindowState)) {
        let map = self
            .limiters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(limiter) = map.get(&item.subject).and_then(Weak::upgrade) {
            limiter.on_window(item, change);
        }
    }

    /// This node's requests in flight under every concurrency limit, by
    /// subject (for the shared counters).
    pub fn in_flight(&self) -> Vec<(String, u32)> {
        let map = self
            .limiters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.iter()
            .filter_map(|(subject, limiter)| {
                let limiter = limiter.upgrade()?;
                limiter.concurrent_max?;
                Some((subject.clone(), limiter.in_flight.load(Ordering::Acquire)))
            })
            .collect()
    }

    /// Sets the other nodes' requests in flight under `subject`'s limit.
    pub fn set_remote_in_flight(&self, subject: &str, count: u32) {
        let map = self
            .limiters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(limiter) = map.get(subject).and_then(Weak::upgrade) {
            limiter.remote_in_flight.store(count, Ordering::Release);
        }
    }

    /// Drops entries whose limiter is gone (after a reload).
    pub fn sweep(&self) {
        let mut map = self
            .limiters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.retain(|_, limiter| limiter.strong_count() > 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use domain::access::Per;

    fn limiter(requests: u64, per: Per) -> Limiter {
        Limiter::new("plan", &[RateLimit { requests, per }], None)
    }

    #[test]
    fn a_fixed_window_admits_exactly_the_limit() {
        let limiter = limiter(10, Per::Second);
        let start = 1_000_000;
        let admitted = (0..50).filter(|_| limiter.admit(start).is_ok()).count();
        assert_eq!(admitted, 10);
        // The next window opens in 990 ms, but the last window's 10 still
        // weigh in until 100 ms into it: 1.09 s, rounded up.
        let refused = limiter.admit(start + 10).err().map(|e| e.retry_after_s);
        assert_eq!(refused, Some(2));
    }

    /// The last request a window admits says, as `t`, when the next one
    /// fits (what its refusal's `Retry-After` would say), not when the
    /// fixed window ends: a client that waits `t` is admitted.
    #[test]
    fn with_none_left_the_reset_is_when_one_more_fits() {
        let limiter = limiter(2, Per::Minute);
        // Two late in a minute: they weigh on the next one for its first
        // half, so the third fits 33 s on, not when this minute ends.
        let start = 60_000 * 1_000_000;
        assert!(limiter.admit(start + 56_000).is_ok());
        let now = start + 57_000;
        let quota = limiter.admit(now).ok().flatten().unwrap();
        assert_eq!(quota.remaining, 0);
        let refused = limiter.admit(now).err().unwrap();
        assert_eq!(quota.reset_s, refused.retry_after_s);
        assert!(
            quota.reset_s > 3,
            "past the fixed window's end: {}",
            quota.reset_s
        );
        assert!(limiter.admit(now + quota.reset_s * 1_000).is_ok());
    }

    /// A refusal of several units (an AI call's tokens) says when that many
    /// fit, not when one would: retried then, it passes; a second sooner,
    /// it does not.
    #[test]
    fn retry_after_is_the_wait_for_the_units_asked() {
        let limiter = limiter(60, Per::Minute);
        let start = 60_000 * 1_000_000 + 5_000;
        for n in 0..3 {
            assert!(limiter.admit_n(start + n, 18).is_ok());
        }
        let wait = limiter
            .admit_n(start + 1_000, 10)
            .err()
            .map(|e| e.retry_after_s)
            .unwrap();
        assert!(wait > 1, "{wait}");
        let at = start + 1_000 + wait * 1_000;
        assert!(
            limiter.admit_n(at - 1_000, 10).is_err(),
            "{wait} s is not too long"
        );
        assert!(limiter.admit_n(at, 10).is_ok(), "after {wait} s it fits");
    }

    #[test]
    fn under_steady_overload_each_window_admits_the_limit() {
        // 1000 attempts spread over each of 5 one-second windows.
        let limiter = limiter(100, Per::Second);
        let mut per_window = [0u64; 6];
        for ms in 0..6000u64 {
            let now = 10_000_000 + ms;
            if limiter.admit(now).is_ok() {
                per_window[usize::try_from(ms / 1000).unwrap_or(0)] += 1;
            }
        }
        for (index, admitted) in per_window.iter().enumerate() {
            assert!(
                (99..=100).contains(admitted),
                "window {index}: {admitted} admitted"
            );
        }
    }

    #[test]
    fn any_sliding_window_stays_near_the_limit() {
        let limiter = limiter(60, Per::Minute);
        let mut admitted_at = Vec::new();
        for step in 0..(180 * 4) {
            let now = 60_000 * 1000 + step * 250;
            if limiter.admit(now).is_ok() {
                admitted_at.push(now);
            }
        }
        for (index, &start) in admitted_at.iter().enumerate() {
            let in_window = admitted_at[index..]
                .iter()
                .take_while(|&&t| t < start + 60_000)
                .count();
            assert!(in_window <= 61, "{in_window} in the minute from {start}");
        }
    }

    #[test]
    fn refusals_count_nowhere_and_refunds_give_back() {
        let limiter = Limiter::new(
            "plan",
            &[
                RateLimit {
                    requests: 100,
                    per: Per::Minute,
                },
                RateLimit {
                    requests: 2,
                    per: Per::Second,
                },
            ],
            None,
        );
        let now = 5_000_000;
        assert!(limiter.admit(now).is_ok());
        assert!(limiter.admit(now).is_ok());
        let exceeded = limiter.admit(now).err();
        assert_eq!(exceeded.map(|e| e.quota.name), Some("second"));
        limiter.refund(now);
        let quota = limiter.admit(now).ok().flatten();
        assert_eq!(quota.map(|q| (q.name, q.remaining)), Some(("second", 0)));
        // Two seconds on, the second window is fresh (1 of 2 left).
        let after = limiter.admit(now + 2000).ok().flatten();
        assert_eq!(after.map(|q| (q.name, q.remaining)), Some(("second", 1)));
    }

    #[test]
    fn concurrency_is_bounded_and_released() {
        let limiter = Arc::new(Limiter::new("plan", &[], Some(2)));
        let first = limiter.enter().ok().flatten();
        let second = limiter.enter().ok().flatten();
        assert!(first.is_some() && second.is_some());
        assert!(limiter.enter().is_err());
        drop(first);
        assert!(limiter.enter().is_ok());
    }

    #[test]
    fn shared_totals_count_other_nodes() {
        let limits = [RateLimit {
            requests: 10,
            per: Per::Hour,
        }];
        let (one, two) = (LimiterRegistry::default(), LimiterRegistry::default());
        let a = one.get("s".into(), "plan", &limits, None);
        let b = two.get("s".into(), "plan", &limits, None);
        let (Some(a), Some(b)) = (a, b) else {
            unreachable!("limits given")
        };
        let now = 3_600_000 * 7 + 5;
        // Node one admits 6, node two 3; each learns the other's count
        // through the shared total (what Redis would hold).
        for _ in 0..6 {
            assert!(a.admit(now).is_ok());
        }
        for _ in 0..3 {
            assert!(b.admit(now).is_ok());
        }
        let mut total = 0;
        let pushed: Vec<(SyncItem, &LimiterRegistry)> = one
            .take_unsynced(now)
            .into_iter()
            .map(|i| (i, &one))
            .chain(two.take_unsynced(now).into_iter().map(|i| (i, &two)))
            .collect();
        for (item, _) in &pushed {
            total += item.delta;
        }
        assert_eq!(total, 9);
        for (item, registry) in &pushed {
            registry.set_total(item, total);
        }
        // One more fits: node one takes it and is full.
        assert!(a.admit(now).is_ok());
        assert!(a.admit(now).is_err(), "10 of 10 used across nodes");
        // Node two has not heard of it yet: between two syncs a node can
        // overshoot by what the others admitted meanwhile.
        assert!(b.admit(now).is_ok());
        let items: Vec<(SyncItem, &LimiterRegistry)> = one
            .take_unsynced(now)
            .into_iter()
            .map(|i| (i, &one))
            .chain(two.take_unsynced(now).into_iter().map(|i| (i, &two)))
            .collect();
        // Each node sends only what is new (one admission each).
        assert_eq!(
            items.iter().map(|(i, _)| i.delta).collect::<Vec<_>>(),
            [1, 1]
        );
        for (item, registry) in &items {
            registry.set_total(item, 11);
        }
        assert!(a.admit(now).is_err());
        assert!(b.admit(now).is_err());
    }

    #[test]
    fn counts_of_a_failed_sync_go_with_the_next() {
        let limits = [RateLimit {
            requests: 100,
            per: Per::Hour,
        }];
        let registry = LimiterRegistry::default();
        let Some(limiter) = registry.get("s".into(), "plan", &limits, None) else {
            unreachable!("limits given")
        };
        let now = 3_600_000 * 7 + 5;
        for _ in 0..5 {
            assert!(limiter.admit(now).is_ok());
        }
        let failed = registry.take_unsynced(now);
        assert_eq!(failed.iter().map(|i| i.delta).sum::<u64>(), 5);
        // Redis did not answer: the five are sent again, with what came
        // meanwhile.
        for item in &failed {
            registry.give_back(item);
        }
        for _ in 0..3 {
            assert!(limiter.admit(now).is_ok());
        }
        let next = registry.take_unsynced(now);
        assert_eq!(next.iter().map(|i| i.delta).sum::<u64>(), 8);
        // A window that has passed is not given back into the next one.
        registry.give_back(&next[0]);
        let later = now + 3_600_000;
        assert!(limiter.admit(later).is_ok());
        let fresh = registry.take_unsynced(later);
        assert_eq!(fresh.iter().map(|i| i.delta).sum::<u64>(), 1);
    }

    #[test]
    fn the_registry_keeps_counters_while_limits_stay() {
        let registry = LimiterRegistry::default();
        let limits = [RateLimit {
            requests: 1,
            per: Per::Hour,
        }];
        let first = registry.get("sub:1".into(), "plan", &limits, None);
        let now = 3_600_000 * 10;
        assert!(first.as_ref().is_some_and(|l| l.admit(now).is_ok()));
        let again = registry.get("sub:1".into(), "plan", &limits, None);
        assert!(
            again.as_ref().is_some_and(|l| l.admit(now).is_err()),
            "same counters"
        );
        let changed = registry.get(
            "sub:1".into(),
            "plan",
            &[RateLimit {
                requests: 2,
                per: Per::Hour,
            }],
            None,
        );
        assert!(
            changed.as_ref().is_some_and(|l| l.admit(now).is_ok()),
            "the hour's count carries over: one more under a limit of two"
        );
        // Another window added, or the limit lowered: the hour stays used.
        let lowered = registry.get(
            "sub:1".into(),
            "plan",
            &[
                RateLimit {
                    requests: 1,
                    per: Per::Hour,
                },
                RateLimit {
                    requests: 100,
                    per: Per::Day,
                },
            ],
            Some(2),
        );
        let lowered = lowered.unwrap();
        assert!(lowered.admit(now).is_err(), "no fresh allowance");
        let permit = lowered.enter().unwrap();
        // Requests in flight stay counted under changed limits.
        let raised = registry
            .get(
                "sub:1".into(),
                "plan",
                &[RateLimit {
                    requests: 5,
                    per: Per::Hour,
                }],
                Some(1),
            )
            .unwrap();
        assert!(raised.enter().is_err(), "the one in flight holds the slot");
        drop(permit);
        assert!(raised.enter().is_ok());
        assert!(registry.get("sub:2".into(), "plan", &[], None).is_none());
    }
}
