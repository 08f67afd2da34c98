//! AI services (SPEC §7): which models a service of kind `ai` offers, the
//! aliases it defines (weighted targets plus ordered fallbacks), the markup
//! over catalogue prices and its timeouts; and the token prices a plan may
//! set.
//!
//! Models are named `<provider>/<model>`, where `<provider>` is the slug of
//! a configured provider and `<model>` the provider's own name for it (which
//! may itself hold slashes: `openrouter/meta-llama/llama-3.1-8b`).
//! `<provider>/*` offers every model the provider serves (its catalogue
//! preset's, plus those an operator added).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::money::{self, Sign};
use crate::validate::FieldErrors;

/// Aliases one service may define, at most.
pub const ALIASES_MAX: usize = 256;
/// Targets plus fallbacks of one alias, at most.
pub const ALIAS_TARGETS_MAX: usize = 16;
/// Models one service may list, at most.
pub const MODELS_MAX: usize = 1024;
/// Highest markup accepted (1000×).
pub const MARKUP_MAX_NANOS: i64 = 1_000 * money::NANOS_PER_UNIT;

/// What an `ai` service offers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AiSpec {
    /// `<provider>/<model>` or `<provider>/*`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<String>,
    /// Names callers may use instead of a model, each resolving to
    /// weighted targets with ordered fallbacks.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub aliases: BTreeMap<String, AliasSpec>,
    /// Multiplier over the catalogue's (or the operator's) model prices, as
    /// a decimal string (`"1.25"`); default `"1"`. A plan's own `markup` or
    /// `token_prices` win over it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub markup: Option<String>,
    #[serde(default, skip_serializing_if = "AiTimeouts::is_default")]
    pub timeouts: AiTimeouts,
}

/// An alias: one of `targets` is picked by weight; when it fails with 429,
/// 5xx, a timeout or a context-length error, `fallbacks` are tried in
/// order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AliasSpec {
    pub targets: Vec<AliasTarget>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fallbacks: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AliasTarget {
    /// `<provider>/<model>`.
    pub model: String,
    #[serde(default = "AliasTarget::default_weight")]
    #[schema(minimum = 1, maximum = 1000)]
    pub weight: u32,
}

impl AliasTarget {
    fn default_weight() -> u32 {
        1
    }
}

/// Time limits of a call to a provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AiTimeouts {
    /// To open a connection to the provider (default 5 s).
    #[serde(default = "AiTimeouts::default_connect")]
    pub connect_ms: u64,
    /// Until the provider's answer starts: response headers, and for a
    /// stream its first event (default 60 s). A fallback is tried after it.
    #[serde(default = "AiTimeouts::default_first_token")]
    pub first_token_ms: u64,
    /// For the whole call, stream included (default 10 min).
    #[serde(default = "AiTimeouts::default_total")]
    pub total_ms: u64,
}

impl AiTimeouts {
    fn default_connect() -> u64 {
        5_000
    }
    fn default_first_token() -> u64 {
        60_000
    }
    fn default_total() -> u64 {
        600_000
    }
    fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

impl Default for AiTimeouts {
    fn default() -> Self {
        Self {
            connect_ms: Self::default_connect(),
            first_token_ms: Self::default_first_token(),
            total_ms: Self::default_total(),
        }
    }
}

/// `<provider>/<model>` split at the first slash.
pub fn split_model(name: &str) -> Option<(&str, &str)> {
    let (provider, model) = name.split_once('/')?;
    (crate::id::is_slug(provider) && !model.is_empty()).then_some((provider, model))
}

fn is_alias_name(name: &str) -> bool {
    (1..=100).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b))
}

fn check_model_name(errors: &mut FieldErrors, field: &str, name: &str, wildcard: bool) {
    let ok = name.len() <= crate::providers::MODEL_NAME_MAX
        && !name.chars().any(|c| c.is_control() || c.is_whitespace())
        && split_model(name).is_some_and(|(_, model)| wildcard || model != "*");
    if !ok {
        errors.add(
            field,
            if wildcard {
                "must be <provider>/<model> or <provider>/* (the provider's slug, a slash, the model)"
            } else {
                "must be <provider>/<model> (the provider's slug, a slash, the model)"
            },
        );
    }
}

/// A markup as nano-units per unit (`"1.25"` → 1 250 000 000).
pub fn parse_markup(text: &str) -> Result<i64, String> {
    let value = money::parse(text, Sign::NonNegative).map_err(|e| e.to_string())?;
    if value > MARKUP_MAX_NANOS {
        return Err("must be at most 1000".into());
    }
    Ok(value)
}

impl AiSpec {
    pub fn validate(&self, errors: &mut FieldErrors) {
        if self.models.is_empty() && self.aliases.is_empty() {
            errors.add("ai.models", "list at least one model or alias");
        }
        if self.models.len() > MODELS_MAX {
            errors.add("ai.models", format!("at most {MODELS_MAX} models"));
        }
        for (index, name) in self.models.iter().enumerate() {
            check_model_name(errors, &format!("ai.models[{index}]"), name, true);
        }
        if self.aliases.len() > ALIASES_MAX {
            errors.add("ai.aliases", format!("at most {ALIASES_MAX} aliases"));
        }
        for (alias, spec) in &self.aliases {
            let field = format!("ai.aliases.{alias}");
            if !is_alias_name(alias) {
                errors.add(
                    &field,
                    "alias names are 1 to 100 of [A-Za-z0-9._:-] (no slash: that names a provider's model)",
                );
            }
            if spec.targets.is_empty() {
                errors.add(format!("{field}.targets"), "give at least one target");
            }
            if spec.targets.len() + spec.fallbacks.len() > ALIAS_TARGETS_MAX {
                errors.add(
                    &field,
                    format!("at most {ALIAS_TARGETS_MAX} targets and fallbacks together"),
                );
            }
            for (index, target) in spec.targets.iter().enumerate() {
                check_model_name(
                    errors,
                    &format!("{field}.targets[{index}].model"),
                    &target.model,
                    false,
                );
                if !(1..=1000).contains(&target.weight) {
                    errors.add(
                        format!("{field}.targets[{index}].weight"),
                        "must be from 1 to 1000",
                    );
                }
            }
            for (index, model) in spec.fallbacks.iter().enumerate() {
                check_model_name(errors, &format!("{field}.fallbacks[{index}]"), model, false);
            }
        }
        if let Some(markup) = &self.markup
            && let Err(message) = parse_markup(markup)
        {
            errors.add("ai.markup", message);
        }
        let t = &self.timeouts;
        for (field, value) in [
            ("ai.timeouts.connect_ms", t.connect_ms),
            ("ai.timeouts.first_token_ms", t.first_token_ms),
            ("ai.timeouts.total_ms", t.total_ms),
        ] {
            if value == 0 || value > 3_600_000 {
                errors.add(field, "must be from 1 to 3600000");
            }
        }
    }

    /// The providers this service names (for reference checks).
    pub fn providers(&self) -> Vec<&str> {
        let mut out: Vec<&str> = self
            .models
            .iter()
            .map(String::as_str)
            .chain(self.aliases.values().flat_map(|alias| {
                alias
                    .targets
                    .iter()
                    .map(|t| t.model.as_str())
                    .chain(alias.fallbacks.iter().map(String::as_str))
            }))
            .filter_map(|name| split_model(name).map(|(provider, _)| provider))
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }
}

/// A plan's price for a model's tokens, per million, as decimal strings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenPrice {
    pub input_per_million: String,
    pub output_per_million: String,
    /// Default: the input price.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_input_per_million: Option<String>,
}

/// Prices per million tokens in nano-units: input, output, cached input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TokenPricesNanos {
    pub input: i64,
    pub output: i64,
    pub cached_input: Option<i64>,
}

impl TokenPrice {
    pub fn nanos(&self) -> Result<TokenPricesNanos, money::AmountError> {
        Ok(TokenPricesNanos {
            input: money::parse(&self.input_per_million, Sign::NonNegative)?,
            output: money::parse(&self.output_per_million, Sign::NonNegative)?,
            cached_input: self
                .cached_input_per_million
                .as_deref()
                .map(|text| money::parse(text, Sign::NonNegative))
                .transpose()?,
        })
    }

    pub fn validate(&self, field: &str, errors: &mut FieldErrors) {
        for (name, value) in [
            ("input_per_million", Some(&self.input_per_million)),
            ("output_per_million", Some(&self.output_per_million)),
            (
                "cached_input_per_million",
                self.cached_input_per_million.as_ref(),
            ),
        ] {
            if let Some(text) = value
                && let Err(error) = money::parse(text, Sign::NonNegative)
            {
                errors.add(format!("{field}.{name}"), error.to_string());
            }
        }
    }
}

impl TokenPricesNanos {
    /// These prices times `markup` (nano-units per unit), rounded up.
    pub fn marked_up(self, markup: i64) -> Self {
        let scale = |price: i64| -> i64 {
            let product = i128::from(price) * i128::from(markup);
            let unit = i128::from(money::NANOS_PER_UNIT);
            i64::try_from((product + unit - 1) / unit).unwrap_or(i64::MAX)
        };
        Self {
            input: scale(self.input),
            output: scale(self.output),
            cached_input: self.cached_input.map(scale),
        }
    }
}

/// Checks a plan's `token_prices` keys (a model `<provider>/<model>`, an
/// alias, or `*` for every model) and values.
pub fn validate_token_prices(prices: &BTreeMap<String, TokenPrice>, errors: &mut FieldErrors) {
    if prices.len() > MODELS_MAX {
        errors.add("token_prices", format!("at most {MODELS_MAX} entries"));
    }
    for (name, price) in prices {
        let field = format!("token_prices.{name}");
        if name != "*" && !is_alias_name(name) && split_model(name).is_none() {
            errors.add(&field, "keys are <provider>/<model>, an alias, or *");
        }
        price.validate(&field, errors);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: serde_json::Value) -> AiSpec {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn valid_spec() {
        let spec = spec(serde_json::json!({
            "models": ["openai/gpt-4o-mini", "openrouter/meta-llama/llama-3.1-8b", "groq/*"],
            "aliases": {"fast": {"targets": [{"model": "openai/gpt-4o-mini", "weight": 3}, {"model": "groq/llama-3.1-8b-instant"}], "fallbacks": ["anthropic/claude-3-5-haiku-latest"]}},
            "markup": "1.2"
        }));
        let mut errors = FieldErrors::new();
        spec.validate(&mut errors);
        assert!(errors.into_result().is_ok());
        assert_eq!(
            spec.providers(),
            vec!["anthropic", "groq", "openai", "openrouter"]
        );
        assert_eq!(spec.timeouts, AiTimeouts::default());
    }

    #[test]
    fn every_problem_is_named() {
        let spec = spec(serde_json::json!({
            "models": ["gpt-4o", "Open AI/x", "openai/"],
            "aliases": {"a/b": {"targets": []}, "ok": {"targets": [{"model": "openai/*", "weight": 0}], "fallbacks": ["nope"]}},
            "markup": "-1",
            "timeouts": {"connect_ms": 0}
        }));
        let mut errors = FieldErrors::new();
        spec.validate(&mut errors);
        let text = format!("{:?}", errors.into_result().unwrap_err());
        for field in [
            "ai.models[0]",
            "ai.models[1]",
            "ai.models[2]",
            "ai.aliases.a/b",
            "ai.aliases.a/b.targets",
            "ai.aliases.ok.targets[0].model",
            "ai.aliases.ok.targets[0].weight",
            "ai.aliases.ok.fallbacks[0]",
            "ai.markup",
            "ai.timeouts.connect_ms",
        ] {
            assert!(text.contains(field), "{field} missing in {text}");
        }
    }

    #[test]
    fn markup_rounds_up() {
        let prices = TokenPricesNanos {
            input: 150_000_000,
            output: 600_000_000,
            cached_input: Some(75_000_000),
        };
        let marked = prices.marked_up(parse_markup("1.2").unwrap());
        assert_eq!(marked.input, 180_000_000);
        assert_eq!(marked.output, 720_000_000);
        assert_eq!(marked.cached_input, Some(90_000_000));
        let odd = TokenPricesNanos {
            input: 1,
            output: 3,
            cached_input: None,
        }
        .marked_up(parse_markup("0.5").unwrap());
        assert_eq!((odd.input, odd.output), (1, 2));
        assert!(parse_markup("1001").is_err());
    }

    #[test]
    fn token_price_keys() {
        let mut prices = BTreeMap::new();
        let price = TokenPrice {
            input_per_million: "1".into(),
            output_per_million: "2".into(),
            cached_input_per_million: None,
        };
        prices.insert("*".to_owned(), price.clone());
        prices.insert("fast".to_owned(), price.clone());
        prices.insert("openai/gpt-4o".to_owned(), price.clone());
        let mut errors = FieldErrors::new();
        validate_token_prices(&prices, &mut errors);
        assert!(errors.into_result().is_ok());
        prices.insert("bad key!".to_owned(), price);
        let mut errors = FieldErrors::new();
        validate_token_prices(&prices, &mut errors);
        assert!(errors.into_result().is_err());
    }
}
