use crate::Usage;
use crate::price::Prices;

fn usage(input: u64, cached_input: u64, output: u64) -> Usage {
    Usage {
        input,
        output,
        cached_input,
        cache_write: 0,
        reasoning: 0,
    }
}

/// $2.50 / $10 per million tokens, cached input $1.25: in nano-units.
const GPT4O: Prices = Prices {
    input_per_million: 2_500_000_000,
    output_per_million: 10_000_000_000,
    cached_input_per_million: Some(1_250_000_000),
};

#[test]
fn cost_with_and_without_cache_prices() {
    // 1,000 uncached in, 500 cached in, 200 out.
    let cost = GPT4O.cost(&usage(1_500, 500, 200));
    assert_eq!(cost, 1_000 * 2_500 + 500 * 1_250 + 200 * 10_000);
    let no_cache_price = Prices {
        cached_input_per_million: None,
        ..GPT4O
    };
    assert_eq!(
        no_cache_price.cost(&usage(1_500, 500, 200)),
        1_500 * 2_500 + 200 * 10_000
    );
    // Cached beyond input is ignored.
    assert_eq!(GPT4O.cost(&usage(10, 50, 0)), 10 * 1_250);
}

#[test]
fn cost_rounds_up_to_the_nano() {
    let cheap = Prices {
        input_per_million: 1,
        output_per_million: 3,
        cached_input_per_million: None,
    };
    assert_eq!(cheap.cost(&usage(1, 0, 0)), 1);
    assert_eq!(cheap.cost(&usage(1_000_000, 0, 0)), 1);
    assert_eq!(cheap.cost(&usage(1_000_001, 0, 0)), 2);
    assert_eq!(cheap.cost(&usage(0, 0, 333_333)), 1);
    assert_eq!(cheap.cost(&usage(0, 0, 333_334)), 2);
    assert_eq!(cheap.cost(&usage(0, 0, 0)), 0);
}

#[test]
fn zero_negative_and_huge_prices() {
    let free = Prices::default();
    assert_eq!(free.cost(&usage(u64::MAX, 0, u64::MAX)), 0);
    assert_eq!(free.max_output_affordable(1_000, 0), u64::MAX);
    assert_eq!(free.max_cost(u64::MAX, u64::MAX), 0);

    let negative = Prices {
        input_per_million: -5,
        output_per_million: -5,
        cached_input_per_million: Some(-1),
    };
    assert_eq!(negative.cost(&usage(1_000_000, 10, 1_000_000)), 0);

    let huge = Prices {
        input_per_million: i64::MAX,
        output_per_million: i64::MAX,
        cached_input_per_million: Some(i64::MAX),
    };
    assert_eq!(
        huge.cost(&usage(u64::MAX, u64::MAX / 2, u64::MAX)),
        i64::MAX
    );
    assert_eq!(huge.cost(&usage(1, 0, 0)), i64::MAX / 1_000_000 + 1);
    assert_eq!(huge.max_output_affordable(u64::MAX, i64::MAX), 0);
    assert_eq!(huge.max_output_affordable(0, i64::MAX), 1_000_000);
}

#[test]
fn max_output_affordable_is_the_largest_that_fits() {
    for budget in [0i64, 1, 999, 25_000, 1_000_000, 123_456_789] {
        for input in [0u64, 1, 7, 1_000] {
            let max = GPT4O.max_output_affordable(input, budget);
            if GPT4O.max_cost(input, 0) > budget {
                assert_eq!(max, 0, "input {input} budget {budget}");
                continue;
            }
            assert!(
                GPT4O.max_cost(input, max) <= budget,
                "input {input} budget {budget} max {max}"
            );
            assert!(
                GPT4O.max_cost(input, max + 1) > budget,
                "input {input} budget {budget} max {max}"
            );
        }
    }
    assert_eq!(GPT4O.max_output_affordable(10, -1), 0);
    // 10 in = 25,000 nanos; 5 nanos left buy nothing at 10,000 per token.
    assert_eq!(GPT4O.max_output_affordable(10, 25_005), 0);
    assert_eq!(GPT4O.max_output_affordable(10, 35_000), 1);
    // Not even the input fits.
    assert_eq!(GPT4O.max_output_affordable(11, 25_000), 0);
    assert_eq!(GPT4O.max_cost(1_000, 100), 1_000 * 2_500 + 100 * 10_000);
}

/// Anthropic's cache writes cost 1.25 times the input price, exactly.
#[test]
fn cache_writes_cost_a_quarter_more_than_input() {
    let claude = Prices {
        input_per_million: 3_000_000_000,
        output_per_million: 15_000_000_000,
        cached_input_per_million: Some(300_000_000),
    };
    // 21 plain, 1,000 written, 100 read; 5 out.
    let usage = Usage {
        input: 1_121,
        output: 5,
        cached_input: 100,
        cache_write: 1_000,
        reasoning: 0,
    };
    assert_eq!(
        claude.cost(&usage),
        21 * 3_000 + 1_000 * 3_750 + 100 * 300 + 5 * 15_000
    );
    // Writes past the input are not believed.
    let inflated = Usage {
        cache_write: 10_000,
        ..usage
    };
    assert_eq!(
        claude.cost(&inflated),
        1_021 * 3_750 + 100 * 300 + 5 * 15_000
    );
    // A quarter of a nano-unit rounds up, as every cost does.
    let one = Prices {
        input_per_million: 1,
        output_per_million: 0,
        cached_input_per_million: None,
    };
    let written = Usage {
        input: 1,
        cache_write: 1,
        ..Usage::default()
    };
    assert_eq!(one.cost(&written), 1);
}
