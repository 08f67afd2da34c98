//! A call's place in its plan's token quota and tokens-per-minute limit.
//!
//! The quota is held like money: before the call, the most it can use
//! (input estimate plus `max_tokens`) is added to the subscription's token
//! counter — within the quota when overage is `block`, so concurrent calls
//! never overrun it — and settled to the tokens reported; a call that
//! fails gives its tokens back. The tokens a call takes from what the
//! quota still included are free; the rest are charged (overage `charge`).
//!
//! With many nodes, the free tokens are taken from the node's grant of the
//! quota (`money::CounterLease`), so the nodes together never give more
//! than the quota includes: what a call does not use goes back to it.
//!
//! Tokens per minute are checked on the input estimate before the call and
//! counted with the output after it, as LiteLLM and the providers do: a
//! call that was admitted is never cut off for its answer's length.

use std::sync::Arc;

use crate::limit::Limiter;
use crate::money::Counter;

/// What one call holds of its token quota and limit.
#[derive(Default)]
pub(crate) struct TokenHold {
    /// The token counter and the tokens added to it for this call.
    counter: Option<(Arc<Counter>, u64)>,
    /// Tokens of the quota this call may use at no price.
    pub free: u64,
    /// The quota's tokens per period.
    included: u64,
    /// Many nodes: the free tokens were taken from the node's grant, in
    /// the period starting then.
    granted: Option<i64>,
    /// The tokens-per-minute limiter and the input tokens admitted in it.
    per_minute: Option<(Arc<Limiter>, u64)>,
    settled: bool,
}

impl TokenHold {
    /// Holds `tokens` of a quota of `included` per period in `counter`,
    /// `free` of them at no price.
    pub(crate) fn hold(
        &mut self,
        counter: &Arc<Counter>,
        (tokens, free): (u64, u64),
        included: u64,
    ) {
        self.counter = Some((counter.clone(), tokens));
        self.free = free;
        self.included = included;
    }

    /// As [`TokenHold::hold`], the free tokens taken from the node's grant
    /// (many nodes).
    pub(crate) fn hold_granted(
        &mut self,
        counter: &Arc<Counter>,
        (tokens, free): (u64, u64),
        included: u64,
    ) {
        self.granted = Some(counter.period().0);
        self.hold(counter, (tokens, free), included);
    }

    /// Gives `free` tokens no longer needed back to the node's grant.
    fn give_back_free(&self, counter: &Counter, unused: u64) {
        if let Some(start) = self.granted
            && unused > 0
        {
            counter.put_back_grant(i64::try_from(unused).unwrap_or(i64::MAX), start);
        }
    }

    /// Holds no more than `tokens` (the call was capped after the hold):
    /// the rest goes back to the quota at once.
    pub(crate) fn shrink_to(&mut self, tokens: u64) {
        if let Some((counter, held)) = &mut self.counter
            && tokens < *held
        {
            counter.remove_count(*held - tokens);
            *held = tokens;
            let free = self.free.min(tokens);
            let counter = counter.clone();
            self.give_back_free(&counter, self.free - free);
            self.free = free;
        }
    }

    pub(crate) fn per_minute(&mut self, limiter: &Arc<Limiter>, input: u64) {
        self.per_minute = Some((limiter.clone(), input));
    }

    /// Counts what the call used and returns the part of `usage` to
    /// charge: the free tokens come off the input first, then the output.
    pub(crate) fn settle(&mut self, usage: &ai::Usage) -> ai::Usage {
        self.settled = true;
        let total = usage.input.saturating_add(usage.output);
        if let Some((counter, held)) = &self.counter {
            if total > *held {
                // Beyond what was held (the input was estimated low):
                // counted, and free as far as the quota still has room
                // (many nodes: as the node's grant has), charged beyond.
                let extra = total - held;
                let before = counter.add_count(extra, None).unwrap_or_else(|used| used);
                // Only a call all free so far: else the quota had no room.
                let room = if self.free < *held {
                    0
                } else if self.granted.is_some() {
                    match counter.take_from_grant(extra, 0) {
                        Some(Ok(taken)) => taken,
                        _ => 0,
                    }
                } else {
                    self.included.saturating_sub(before).min(extra)
                };
                self.free += room;
            } else {
                counter.remove_count(held - total);
                self.give_back_free(counter, self.free.saturating_sub(total));
            }
        }
        if let Some((limiter, admitted)) = &self.per_minute {
            let now = u64::try_from(domain::now_ms()).unwrap_or(0);
            limiter.add(now, total.saturating_sub(*admitted));
        }
        charged(usage, self.free)
    }
}

impl Drop for TokenHold {
    fn drop(&mut self) {
        if !self.settled
            && let Some((counter, held)) = &self.counter
        {
            counter.remove_count(*held);
            self.give_back_free(counter, self.free);
        }
    }
}

/// `usage` less `free` tokens, taken from the input (uncached first) and
/// then the output.
pub(crate) fn charged(usage: &ai::Usage, free: u64) -> ai::Usage {
    if free == 0 {
        return *usage;
    }
    let free_input = free.min(usage.input);
    let free_output = (free - free_input).min(usage.output);
    // Free tokens come off plain input first, then cache writes, then
    // cached input.
    let cached = usage.cached_input.min(usage.input);
    let written = usage.cache_write.min(usage.input - cached);
    let plain = usage.input - cached - written;
    let from_plain = free_input.min(plain);
    let from_written = (free_input - from_plain).min(written);
    let from_cached = free_input - from_plain - from_written;
    let output = usage.output - free_output;
    ai::Usage {
        input: usage.input - free_input,
        output,
        cached_input: cached - from_cached,
        cache_write: written - from_written,
        reasoning: usage.reasoning.min(output),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_tokens_come_off_the_input_first() {
        let usage = ai::Usage {
            input: 100,
            output: 50,
            cached_input: 40,
            cache_write: 0,
            reasoning: 10,
        };
        assert_eq!(charged(&usage, 0), usage);
        let part = charged(&usage, 30);
        assert_eq!((part.input, part.cached_input, part.output), (70, 40, 50));
        let part = charged(&usage, 80);
        assert_eq!((part.input, part.cached_input, part.output), (20, 20, 50));
        let part = charged(&usage, 120);
        assert_eq!((part.input, part.cached_input, part.output), (0, 0, 30));
        assert_eq!(charged(&usage, 500).output, 0);
        assert_eq!(charged(&usage, 500).reasoning, 0);
    }
}
