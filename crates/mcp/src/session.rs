//! Sessions of the initialize-based protocol versions (2025-06-18,
//! 2025-11-25), in memory.
//!
//! The map is split in [`SHARDS`] shards chosen by the session id, so that a
//! request takes one small lock and no request waits on all others. Bounds:
//! at most `max_sessions` in all and `max_sessions_per_caller` per caller
//! (the caller's oldest goes first, then the oldest of all); idle sessions
//! expire after `idle`. Creating a session sweeps expired ones; other
//! accesses expire lazily. Two concurrent creations may each see room and
//! overshoot the cap by the number of concurrent creators, never more.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

const SHARDS: usize = 16;
/// Random bytes in a session id (hex encoded: twice as many characters).
const ID_BYTES: usize = 24;

#[derive(Debug, Clone)]
struct Session {
    caller: String,
    version: &'static str,
    created: Instant,
    last_used: Instant,
}

#[derive(Debug)]
pub(crate) struct Sessions {
    shards: Vec<Mutex<HashMap<String, Session>>>,
    max_sessions: usize,
    max_per_caller: usize,
    idle: Duration,
}

/// The session was found but belongs to another caller, is unknown, or ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct NotFound;

fn lock(shard: &Mutex<HashMap<String, Session>>) -> MutexGuard<'_, HashMap<String, Session>> {
    // A panic elsewhere while holding the lock leaves a map that is still
    // consistent (every update is a single insert or remove).
    shard
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Sessions {
    pub(crate) fn new(max_sessions: usize, max_per_caller: usize, idle: Duration) -> Self {
        Sessions {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            max_sessions: max_sessions.max(1),
            max_per_caller: max_per_caller.max(1),
            idle,
        }
    }

    fn shard(&self, id: &str) -> &Mutex<HashMap<String, Session>> {
        // FNV-1a over the id: ids are random, any mix spreads them; foreign
        // ids land anywhere and simply are not found.
        let hash = id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |hash, b| {
            (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        &self.shards[(hash % SHARDS as u64) as usize]
    }

    fn expired(&self, session: &Session, now: Instant) -> bool {
        now.saturating_duration_since(session.last_used) > self.idle
    }

    /// Opens a session for `caller`, evicting to stay within the bounds.
    pub(crate) fn create(
        &self,
        caller: &str,
        version: &'static str,
    ) -> Result<String, getrandom::Error> {
        let id = new_id()?;
        let now = Instant::now();
        let mut total = 0usize;
        let mut caller_count = 0usize;
        let mut oldest: Option<(Instant, String)> = None;
        let mut caller_oldest: Option<(Instant, String)> = None;
        for shard in &self.shards {
            let mut map = lock(shard);
            map.retain(|_, session| !self.expired(session, now));
            total += map.len();
            for (key, session) in map.iter() {
                if oldest.as_ref().is_none_or(|(at, _)| session.created < *at) {
                    oldest = Some((session.created, key.clone()));
                }
                if session.caller == caller {
                    caller_count += 1;
                    if caller_oldest
                        .as_ref()
                        .is_none_or(|(at, _)| session.created < *at)
                    {
                        caller_oldest = Some((session.created, key.clone()));
                    }
                }
            }
        }
        let evict = if caller_count >= self.max_per_caller {
            caller_oldest
        } else if total >= self.max_sessions {
            oldest
        } else {
            None
        };
        if let Some((_, key)) = evict {
            lock(self.shard(&key)).remove(&key);
        }
        lock(self.shard(&id)).insert(
            id.clone(),
            Session {
                caller: caller.to_owned(),
                version,
                created: now,
                last_used: now,
            },
        );
        Ok(id)
    }

    /// The negotiated version of `caller`'s session `id`, marking it used.
    pub(crate) fn use_session(&self, id: &str, caller: &str) -> Result<&'static str, NotFound> {
        let now = Instant::now();
        let mut map = lock(self.shard(id));
        let Some(session) = map.get_mut(id) else {
            return Err(NotFound);
        };
        if self.expired(session, now) {
            map.remove(id);
            return Err(NotFound);
        }
        if session.caller != caller {
            return Err(NotFound);
        }
        session.last_used = now;
        Ok(session.version)
    }

    /// Ends `caller`'s session `id`.
    pub(crate) fn remove(&self, id: &str, caller: &str) -> Result<(), NotFound> {
        let now = Instant::now();
        let mut map = lock(self.shard(id));
        match map.get(id) {
            Some(session) if session.caller == caller && !self.expired(session, now) => {
                map.remove(id);
                Ok(())
            }
            Some(session) if self.expired(session, now) => {
                map.remove(id);
                Err(NotFound)
            }
            _ => Err(NotFound),
        }
    }

    /// Whether session `id` exists and has not expired.
    pub(crate) fn is_open(&self, id: &str) -> bool {
        let now = Instant::now();
        lock(self.shard(id))
            .get(id)
            .is_some_and(|session| !self.expired(session, now))
    }

    /// Sessions held now, expired ones included until swept.
    pub(crate) fn len(&self) -> usize {
        self.shards.iter().map(|shard| lock(shard).len()).sum()
    }
}

/// A new session id: [`ID_BYTES`] bytes from the operating system's CSPRNG,
/// lower-case hex (visible ASCII only, as the transport requires).
fn new_id() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; ID_BYTES];
    getrandom::fill(&mut bytes)?;
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut id = String::with_capacity(ID_BYTES * 2);
    for b in bytes {
        id.push(HEX[(b >> 4) as usize] as char);
        id.push(HEX[(b & 0xf) as usize] as char);
    }
    Ok(id)
}
