//! Money: integer nano-units (10⁻⁹ of the deployment's currency) in `i64`,
//! shown and accepted as decimal strings (`"12.5"`, `"0.000000001"`).
//!
//! `i64` nano-units hold ±9.2 billion currency units, far beyond any
//! wallet; every sum is checked so that an overflow is an error, never a
//! wrap.

use serde::{Deserialize, Serialize};

/// Nano-units per currency unit.
pub const NANOS_PER_UNIT: i64 = 1_000_000_000;

/// The largest amount accepted in one input: one billion currency units.
pub const MAX_INPUT_NANOS: i64 = 1_000_000_000 * NANOS_PER_UNIT;

/// Why a decimal string is not an amount.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AmountError {
    #[error("must be a decimal string such as \"12.50\"")]
    Malformed,
    #[error("has more than 9 decimals (the smallest unit is 0.000000001)")]
    TooPrecise,
    #[error("is larger than 1000000000")]
    TooLarge,
    #[error("must not be negative")]
    Negative,
    #[error("must be greater than zero")]
    Zero,
    #[error("must not be zero (a negative amount takes money out)")]
    ZeroChange,
}

/// What sign an input may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sign {
    /// `> 0` (top-ups, grants, prices that charge).
    Positive,
    /// `>= 0` (prices, thresholds).
    NonNegative,
    /// Any non-zero value (adjustments).
    NonZero,
}

/// Idempotency keys the ledger's own writers use (call charges, period
/// fees, Stripe, auto top-up, and the keys an admin entry gets when it
/// names none): an entry an admin or a client writes may not take one,
/// or it would stand for, and block, the system's own entry.
pub const SYSTEM_KEY_PREFIXES: [&str; 9] = [
    "charge:",
    "fee:",
    "stripe:",
    "auto-top-up:",
    "top_up:",
    "grant:",
    "refund:",
    "adjustment:",
    "x402:",
];

/// The system prefix `key` starts with, if any.
pub fn system_key_prefix(key: &str) -> Option<&'static str> {
    SYSTEM_KEY_PREFIXES
        .into_iter()
        .find(|prefix| key.starts_with(prefix))
}

/// Active ISO 4217 codes of currencies (the fund, metal, drawing-right and
/// test codes left out): what `money.currency` may be.
const ISO_4217: &[&str] = &[
    "AED", "AFN", "ALL", "AMD", "ANG", "AOA", "ARS", "AUD", "AWG", "AZN", "BAM", "BBD", "BDT",
    "BGN", "BHD", "BIF", "BMD", "BND", "BOB", "BRL", "BSD", "BTN", "BWP", "BYN", "BZD", "CAD",
    "CDF", "CHF", "CLP", "CNY", "COP", "CRC", "CUC", "CUP", "CVE", "CZK", "DJF", "DKK", "DOP",
    "DZD", "EGP", "ERN", "ETB", "EUR", "FJD", "FKP", "GBP", "GEL", "GHS", "GIP", "GMD", "GNF",
    "GTQ", "GYD", "HKD", "HNL", "HTG", "HUF", "IDR", "ILS", "INR", "IQD", "IRR", "ISK", "JMD",
    "JOD", "JPY", "KES", "KGS", "KHR", "KMF", "KPW", "KRW", "KWD", "KYD", "KZT", "LAK", "LBP",
    "LKR", "LRD", "LSL", "LYD", "MAD", "MDL", "MGA", "MKD", "MMK", "MNT", "MOP", "MRU", "MUR",
    "MVR", "MWK", "MXN", "MYR", "MZN", "NAD", "NGN", "NIO", "NOK", "NPR", "NZD", "OMR", "PAB",
    "PEN", "PGK", "PHP", "PKR", "PLN", "PYG", "QAR", "RON", "RSD", "RUB", "RWF", "SAR", "SBD",
    "SCR", "SDG", "SEK", "SGD", "SHP", "SLE", "SLL", "SOS", "SRD", "SSP", "STN", "SVC", "SYP",
    "SZL", "THB", "TJS", "TMT", "TND", "TOP", "TRY", "TTD", "TWD", "TZS", "UAH", "UGX", "USD",
    "UYU", "UZS", "VED", "VES", "VND", "VUV", "WST", "XAF", "XCD", "XCG", "XOF", "XPF", "YER",
    "ZAR", "ZMW", "ZWG", "ZWL",
];

/// Whether `code` is an ISO 4217 currency code (upper case).
pub fn is_currency(code: &str) -> bool {
    ISO_4217.contains(&code)
}

/// Parses a decimal string into nano-units: optional `-`, digits, and at
/// most 9 decimals; no exponent, no `+`, no spaces, no thousands separators.
pub fn parse(text: &str, sign: Sign) -> Result<i64, AmountError> {
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (whole, fraction) = match digits.split_once('.') {
        Some((whole, fraction)) => (whole, Some(fraction)),
        None => (digits, None),
    };
    if whole.is_empty()
        || !whole.bytes().all(|b| b.is_ascii_digit())
        || fraction.is_some_and(|f| f.is_empty() || !f.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(AmountError::Malformed);
    }
    let fraction = fraction.unwrap_or("");
    if fraction.len() > 9 {
        return Err(AmountError::TooPrecise);
    }
    let whole_value: i64 = if whole.len() > 10 {
        return Err(AmountError::TooLarge);
    } else {
        whole.parse().map_err(|_| AmountError::Malformed)?
    };
    let mut fraction_value: i64 = 0;
    for position in 0..9 {
        let digit = fraction
            .as_bytes()
            .get(position)
            .map_or(0, |b| i64::from(b - b'0'));
        fraction_value = fraction_value * 10 + digit;
    }
    let magnitude = whole_value
        .checked_mul(NANOS_PER_UNIT)
        .and_then(|w| w.checked_add(fraction_value))
        .filter(|m| *m <= MAX_INPUT_NANOS)
        .ok_or(AmountError::TooLarge)?;
    let value = if negative { -magnitude } else { magnitude };
    match sign {
        Sign::Positive if value < 0 => Err(AmountError::Negative),
        Sign::Positive if value == 0 => Err(AmountError::Zero),
        Sign::NonNegative if value < 0 => Err(AmountError::Negative),
        Sign::NonZero if value == 0 => Err(AmountError::ZeroChange),
        _ => Ok(value),
    }
}

/// Decimals of a currency's minor unit (ISO 4217; 2 unless listed).
pub fn minor_digits(currency: &str) -> u32 {
    match currency {
        "BIF" | "CLP" | "DJF" | "GNF" | "ISK" | "JPY" | "KMF" | "KRW" | "PYG" | "RWF" | "UGX"
        | "VND" | "VUV" | "XAF" | "XOF" | "XPF" => 0,
        "BHD" | "IQD" | "JOD" | "KWD" | "LYD" | "OMR" | "TND" => 3,
        _ => 2,
    }
}

fn nanos_per_minor(currency: &str) -> i64 {
    10i64.pow(9 - minor_digits(currency))
}

/// Nano-units in minor units (cents for USD), when exactly representable.
pub fn to_minor(nanos: i64, currency: &str) -> Option<i64> {
    let per = nanos_per_minor(currency);
    (nanos % per == 0).then_some(nanos / per)
}

/// Minor units (cents for USD) in nano-units.
pub fn from_minor(minor: i64, currency: &str) -> Option<i64> {
    minor.checked_mul(nanos_per_minor(currency))
}

/// Formats nano-units as a decimal string: trailing zeros dropped, at
/// least two decimals (`12.50`, `0.004`, `-3.00`, `0.000000001`).
pub fn format(nanos: i64) -> String {
    let mut out = String::with_capacity(24);
    format_into(&mut out, nanos);
    out
}

/// [`format`], appended to `out` (the gateway's `Tollgate-Balance`
/// header is written per call, without the formatting machinery).
pub fn format_into(out: &mut String, nanos: i64) {
    if nanos < 0 {
        out.push('-');
    }
    let magnitude = nanos.unsigned_abs();
    push_u64(out, magnitude / NANOS_PER_UNIT as u64);
    out.push('.');
    let mut fraction = magnitude % NANOS_PER_UNIT as u64;
    let mut digits = [b'0'; 9];
    for digit in digits.iter_mut().rev() {
        *digit = b'0' + (fraction % 10) as u8;
        fraction /= 10;
    }
    let mut len = digits.len();
    while len > 2 && digits[len - 1] == b'0' {
        len -= 1;
    }
    out.push_str(std::str::from_utf8(&digits[..len]).unwrap_or_default());
}

/// Appends `n` in decimal.
pub fn push_u64(out: &mut String, n: u64) {
    out.push_str(decimal(n, &mut [0; 20]));
}

/// `n` in decimal, written at the end of `digits` (without the formatting
/// machinery: header values written per call use it).
pub fn decimal(mut n: u64, digits: &mut [u8; 20]) -> &str {
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    std::str::from_utf8(&digits[start..]).unwrap_or_default()
}

/// A ledger entry's kind (SPEC §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    /// Money paid in (Stripe checkout, auto top-up).
    TopUp,
    /// Money given by the platform.
    Grant,
    /// A metered call or a monthly fee.
    Charge,
    /// Money paid back (a refunded top-up takes it out; a refunded charge
    /// gives it back).
    Refund,
    /// An operator's correction, either way.
    Adjustment,
}

impl EntryKind {
    pub const ALL: [EntryKind; 5] = [
        EntryKind::TopUp,
        EntryKind::Grant,
        EntryKind::Charge,
        EntryKind::Refund,
        EntryKind::Adjustment,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EntryKind::TopUp => "top_up",
            EntryKind::Grant => "grant",
            EntryKind::Charge => "charge",
            EntryKind::Refund => "refund",
            EntryKind::Adjustment => "adjustment",
        }
    }

    pub fn parse(text: &str) -> Option<EntryKind> {
        EntryKind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == text)
    }
}

/// One ledger entry. Entries are only ever appended; the balance of a
/// wallet is the sum of its entries' `amount_nanos`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerEntry {
    pub id: String,
    pub team_id: String,
    pub kind: EntryKind,
    /// Signed: credits are positive, charges negative.
    pub amount_nanos: i64,
    /// Unique per team: appending the same key twice records one entry.
    pub idempotency_key: String,
    /// `root`, `user:<id>`, `gateway`, `stripe`…
    pub actor: String,
    pub reason: Option<String>,
    pub request_id: Option<String>,
    pub created_at_ms: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minor_units() {
        assert_eq!(to_minor(12_340_000_000, "USD"), Some(1234));
        assert_eq!(to_minor(12_345_000_000, "USD"), None, "a tenth of a cent");
        assert_eq!(to_minor(500_000_000_000, "JPY"), Some(500));
        assert_eq!(to_minor(1_500_000_000, "JPY"), None);
        assert_eq!(from_minor(1234, "USD"), Some(12_340_000_000));
        assert_eq!(from_minor(1, "KWD"), Some(1_000_000));
    }

    #[test]
    fn parses_decimal_strings_exactly() {
        assert_eq!(parse("12.5", Sign::Positive), Ok(12_500_000_000));
        assert_eq!(parse("0.000000001", Sign::Positive), Ok(1));
        assert_eq!(parse("0", Sign::NonNegative), Ok(0));
        assert_eq!(parse("-3", Sign::NonZero), Ok(-3 * NANOS_PER_UNIT));
        assert_eq!(parse("1000000000", Sign::Positive), Ok(MAX_INPUT_NANOS));
        assert_eq!(parse("007.10", Sign::Positive), Ok(7_100_000_000));
    }

    #[test]
    fn refuses_what_is_not_an_amount() {
        for (text, sign, error) in [
            ("", Sign::Positive, AmountError::Malformed),
            ("1.", Sign::Positive, AmountError::Malformed),
            (".5", Sign::Positive, AmountError::Malformed),
            ("1e3", Sign::Positive, AmountError::Malformed),
            ("+1", Sign::Positive, AmountError::Malformed),
            (" 1", Sign::Positive, AmountError::Malformed),
            ("1,000", Sign::Positive, AmountError::Malformed),
            ("--1", Sign::NonZero, AmountError::Malformed),
            ("0.0000000001", Sign::Positive, AmountError::TooPrecise),
            (
                "1000000000.000000001",
                Sign::Positive,
                AmountError::TooLarge,
            ),
            (
                "99999999999999999999",
                Sign::Positive,
                AmountError::TooLarge,
            ),
            ("-1", Sign::Positive, AmountError::Negative),
            ("-1", Sign::NonNegative, AmountError::Negative),
            ("0", Sign::Positive, AmountError::Zero),
            ("0.000", Sign::NonZero, AmountError::ZeroChange),
        ] {
            assert_eq!(parse(text, sign), Err(error), "{text:?}");
        }
    }

    #[test]
    fn decimal_integers_are_pushed_whole() {
        for n in [0, 7, 10, 1_000_000_007, u64::MAX] {
            let mut out = String::from("x");
            push_u64(&mut out, n);
            assert_eq!(out, format!("x{n}"));
        }
    }

    #[test]
    fn formats_round_trip() {
        for (nanos, text) in [
            (12_500_000_000, "12.50"),
            (4_000_000, "0.004"),
            (1, "0.000000001"),
            (0, "0.00"),
            (-3 * NANOS_PER_UNIT, "-3.00"),
            (-1, "-0.000000001"),
            (i64::MIN, "-9223372036.854775808"),
        ] {
            assert_eq!(format(nanos), text);
            if nanos != i64::MIN {
                let sign = if nanos == 0 {
                    Sign::NonNegative
                } else {
                    Sign::NonZero
                };
                assert_eq!(parse(text, sign), Ok(nanos));
            }
        }
    }

    #[test]
    fn currencies_and_system_keys_are_known() {
        assert!(is_currency("USD") && is_currency("EUR") && is_currency("JPY"));
        assert!(!is_currency("XYZ") && !is_currency("usd") && !is_currency("XAU"));
        for fund in [
            "BOV", "CLF", "COU", "MXV", "UYW", "USN", "UYI", "CHE", "CHW", "XDR",
        ] {
            assert!(!is_currency(fund), "{fund} is a fund or drawing-right code");
        }
        let mut codes = ISO_4217.to_vec();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), ISO_4217.len(), "a code is listed twice");
        assert_eq!(system_key_prefix("fee:sub:1"), Some("fee:"));
        assert_eq!(system_key_prefix("stripe:checkout:cs_1"), Some("stripe:"));
        assert_eq!(system_key_prefix("order-42"), None);
    }
}
