//! The built-in AI catalogue (`catalog/providers.json`, `catalog/models.json`
//! at the repository's root, embedded in the binary): providers with their
//! base URL and auth style, and models with context window, modalities and
//! prices per million tokens, each price with its source and date.
//!
//! [`Catalog::builtin`] parses and checks it; a catalogue that fails its
//! checks is a build-time bug, caught by this module's tests.

use serde::{Deserialize, Serialize};

use crate::money::{self, Sign};
use crate::providers::ProviderKind;

const PROVIDERS_JSON: &str = include_str!("../../../catalog/providers.json");
const MODELS_JSON: &str = include_str!("../../../catalog/models.json");

/// A provider preset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CatalogProvider {
    pub slug: String,
    pub name: String,
    pub kind: ProviderKind,
    /// May hold `{placeholders}` when `base_url_template` is set.
    pub base_url: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub base_url_template: bool,
    /// `bearer`, `x-api-key`, `x-goog-api-key`, `api-key` or `none`.
    pub auth: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docs: Option<String>,
}

/// What a model takes and gives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Modalities {
    pub input: Vec<String>,
    pub output: Vec<String>,
}

/// A model's list price, per million tokens, as decimal strings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CatalogPrice {
    pub currency: String,
    pub input_per_million: String,
    pub output_per_million: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_input_per_million: Option<String>,
    /// Where the price was read.
    pub source: String,
    /// When the price was known to hold (YYYY-MM-DD).
    pub as_of: String,
}

/// A model of a provider.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CatalogModel {
    pub provider: String,
    pub model: String,
    pub context_window: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_output_tokens: Option<u64>,
    pub modalities: Modalities,
    pub price: CatalogPrice,
}

impl CatalogModel {
    /// Input, output and cached-input prices per million tokens, in
    /// nano-units.
    pub fn prices_nanos(&self) -> Result<(i64, i64, Option<i64>), money::AmountError> {
        let price = &self.price;
        Ok((
            money::parse(&price.input_per_million, Sign::NonNegative)?,
            money::parse(&price.output_per_million, Sign::NonNegative)?,
            price
                .cached_input_per_million
                .as_deref()
                .map(|text| money::parse(text, Sign::NonNegative))
                .transpose()?,
        ))
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProvidersFile {
    #[allow(dead_code)]
    as_of: String,
    providers: Vec<CatalogProvider>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelsFile {
    #[allow(dead_code)]
    as_of: String,
    models: Vec<CatalogModel>,
}

/// The built-in catalogue.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    pub providers: Vec<CatalogProvider>,
    pub models: Vec<CatalogModel>,
}

fn is_date(text: &str) -> bool {
    let bytes = text.as_bytes();
    bytes.len() == 10
        && bytes[4] == b'-'
        && bytes[7] == b'-'
        && bytes
            .iter()
            .enumerate()
            .all(|(i, b)| i == 4 || i == 7 || b.is_ascii_digit())
}

impl Catalog {
    /// The embedded catalogue, parsed and checked; the problems found
    /// otherwise (every one).
    pub fn builtin() -> Result<Catalog, Vec<String>> {
        let providers: ProvidersFile = serde_json::from_str(PROVIDERS_JSON)
            .map_err(|e| vec![format!("catalog/providers.json: {e}")])?;
        let models: ModelsFile = serde_json::from_str(MODELS_JSON)
            .map_err(|e| vec![format!("catalog/models.json: {e}")])?;
        let catalog = Catalog {
            providers: providers.providers,
            models: models.models,
        };
        let problems = catalog.problems();
        if problems.is_empty() {
            Ok(catalog)
        } else {
            Err(problems)
        }
    }

    /// Everything wrong with the catalogue.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let mut slugs = std::collections::HashSet::new();
        for provider in &self.providers {
            if !crate::id::is_slug(&provider.slug) {
                problems.push(format!("provider '{}': not a slug", provider.slug));
            }
            if !slugs.insert(provider.slug.as_str()) {
                problems.push(format!("provider '{}': listed twice", provider.slug));
            }
            if !["bearer", "x-api-key", "x-goog-api-key", "api-key", "none"]
                .contains(&provider.auth.as_str())
            {
                problems.push(format!(
                    "provider '{}': unknown auth '{}'",
                    provider.slug, provider.auth
                ));
            }
            let url_ok = provider.base_url.starts_with("https://")
                || provider.base_url.starts_with("http://localhost")
                || provider.base_url.starts_with("http://127.0.0.1");
            if !url_ok || (provider.base_url.contains('{') != provider.base_url_template) {
                problems.push(format!("provider '{}': bad base_url", provider.slug));
            }
        }
        let mut seen = std::collections::HashSet::new();
        for model in &self.models {
            let name = format!("{}/{}", model.provider, model.model);
            if !slugs.contains(model.provider.as_str()) {
                problems.push(format!("model '{name}': unknown provider"));
            }
            if !seen.insert(name.clone()) {
                problems.push(format!("model '{name}': listed twice"));
            }
            if model.model.is_empty() || model.context_window == 0 {
                problems.push(format!("model '{name}': needs a name and a context window"));
            }
            if model.modalities.input.is_empty() || model.modalities.output.is_empty() {
                problems.push(format!("model '{name}': needs input and output modalities"));
            }
            if let Err(error) = model.prices_nanos() {
                problems.push(format!("model '{name}': price {error}"));
            }
            let price = &model.price;
            if price.currency != "USD" {
                problems.push(format!("model '{name}': prices are in USD"));
            }
            if !price.source.starts_with("https://") {
                problems.push(format!("model '{name}': price source must be an https URL"));
            }
            if !is_date(&price.as_of) {
                problems.push(format!("model '{name}': as_of must be YYYY-MM-DD"));
            }
        }
        problems
    }

    /// The model `provider/model`.
    pub fn model(&self, provider: &str, model: &str) -> Option<&CatalogModel> {
        self.models
            .iter()
            .find(|m| m.provider == provider && m.model == model)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builtin_catalogue_is_complete_and_sound() {
        let catalog = match Catalog::builtin() {
            Ok(catalog) => catalog,
            Err(problems) => panic!("{}", problems.join("\n")),
        };
        let compatible = catalog
            .providers
            .iter()
            .filter(|p| p.kind == ProviderKind::OpenaiCompatible)
            .count();
        assert!(compatible >= 30, "{compatible} OpenAI-compatible presets");
        assert!(
            catalog.models.len() >= 500,
            "{} models",
            catalog.models.len()
        );
        for slug in [
            "openai",
            "anthropic",
            "gemini",
            "mistral",
            "deepseek",
            "groq",
            "together",
            "fireworks",
            "openrouter",
            "perplexity",
            "xai",
            "azure-openai",
            "ollama",
            "vllm",
            "lmstudio",
            "dashscope",
            "moonshot",
            "zhipu",
            "baidu-qianfan",
        ] {
            assert!(
                catalog.providers.iter().any(|p| p.slug == slug),
                "no preset '{slug}'"
            );
        }
    }

    #[test]
    fn problems_are_found() {
        let provider = CatalogProvider {
            slug: "acme".into(),
            name: "Acme".into(),
            kind: ProviderKind::OpenaiCompatible,
            base_url: "https://api.acme.test/{region}/v1".into(),
            base_url_template: false,
            auth: "token".into(),
            docs: None,
        };
        let model = CatalogModel {
            provider: "nobody".into(),
            model: "m".into(),
            context_window: 8192,
            max_output_tokens: None,
            modalities: Modalities {
                input: vec!["text".into()],
                output: vec!["text".into()],
            },
            price: CatalogPrice {
                currency: "USD".into(),
                input_per_million: "1.0000000001".into(),
                output_per_million: "2".into(),
                cached_input_per_million: None,
                source: "http://example.com".into(),
                as_of: "2026-13".into(),
            },
        };
        let catalog = Catalog {
            providers: vec![provider],
            models: vec![model.clone(), model],
        };
        let problems = catalog.problems().join("\n");
        for expected in [
            "unknown auth",
            "bad base_url",
            "unknown provider",
            "listed twice",
            "price",
            "https",
            "YYYY-MM-DD",
        ] {
            assert!(problems.contains(expected), "{expected}: {problems}");
        }
    }
}
