//! Token prices and what a call costs, in nano-units (10⁻⁹ of the currency).
//! Integer arithmetic only: products are taken in `i128`, costs round up to
//! the next nano-unit and saturate at `i64::MAX`; negative prices count as 0.

use crate::Usage;

/// Prices per million tokens, in nano-units.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Prices {
    pub input_per_million: i64,
    pub output_per_million: i64,
    /// Cached input tokens; `None` charges them as ordinary input.
    pub cached_input_per_million: Option<i64>,
}

const MILLION: i128 = 1_000_000;

impl Prices {
    fn input(&self) -> i128 {
        i128::from(self.input_per_million.max(0))
    }

    fn output(&self) -> i128 {
        i128::from(self.output_per_million.max(0))
    }

    fn cached(&self) -> i128 {
        self.cached_input_per_million
            .map_or_else(|| self.input(), |price| i128::from(price.max(0)))
    }

    /// What `usage` costs: `ceil((uncached × input + cached × cached-or-input
    /// plus cache writes × 1.25 × input plus output × output) / 10⁶)`.
    /// Cached tokens and cache writes beyond `input` are ignored. 1.25
    /// times the input price is what Anthropic (the one provider that
    /// reports cache writes) bills for writing its 5-minute prompt cache.
    pub fn cost(&self, usage: &Usage) -> i64 {
        let cached = usage.cached_input.min(usage.input);
        let written = usage.cache_write.min(usage.input - cached);
        let uncached = usage.input - cached - written;
        // In quarters of a micro-unit, so that 1.25 × stays exact. Each
        // product fits an i128; their sum may not.
        let part = |tokens: u64, price: i128, quarters: i128| {
            (i128::from(tokens) * price).saturating_mul(quarters)
        };
        let quarters = part(uncached, self.input(), 4)
            .saturating_add(part(cached, self.cached(), 4))
            .saturating_add(part(written, self.input(), 5))
            .saturating_add(part(usage.output, self.output(), 4));
        to_nanos(quarters / 4 + i128::from(quarters % 4 != 0))
    }

    /// The most a call with `input_tokens` (all uncached) and at most
    /// `max_output` output tokens can cost.
    pub fn max_cost(&self, input_tokens: u64, max_output: u64) -> i64 {
        self.cost(&Usage {
            input: input_tokens,
            output: max_output,
            cached_input: 0,
            cache_write: 0,
            reasoning: 0,
        })
    }

    /// The largest output token count whose cost, with `input_tokens` of
    /// (uncached) input, fits in `budget_nanos`; 0 when not even the input
    /// fits. `u64::MAX` when output is free and the input fits.
    pub fn max_output_affordable(&self, input_tokens: u64, budget_nanos: i64) -> u64 {
        if budget_nanos < 0 {
            return 0;
        }
        // ceil(x / 10⁶) ≤ budget ⇔ x ≤ budget × 10⁶, for integers.
        let limit = i128::from(budget_nanos) * MILLION;
        let input_cost = i128::from(input_tokens) * self.input();
        if input_cost > limit {
            return 0;
        }
        let output_price = self.output();
        if output_price == 0 {
            return u64::MAX;
        }
        let affordable = (limit - input_cost) / output_price;
        u64::try_from(affordable).unwrap_or(u64::MAX)
    }
}

/// Millionths of a nano-unit → nano-units, rounded up, within `0..=i64::MAX`.
fn to_nanos(micros: i128) -> i64 {
    if micros <= 0 {
        return 0;
    }
    let nanos = micros / MILLION + i128::from(micros % MILLION != 0);
    i64::try_from(nanos).unwrap_or(i64::MAX)
}
