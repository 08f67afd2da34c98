//! AI providers (SPEC §2): where models are served from, and the pool of
//! API keys the gateway uses with them. Keys are write-only: stored sealed
//! under the master key, shown back only as a hint of their last
//! characters.

use serde::{Deserialize, Serialize};

use crate::model::{check_own_slug, check_target_url, check_text};
use crate::validate::FieldErrors;

/// How a provider is spoken to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ProviderKind {
    Openai,
    Anthropic,
    Gemini,
    /// Any server that speaks OpenAI's API (Mistral, Groq, vLLM, Ollama…).
    OpenaiCompatible,
}

impl ProviderKind {
    /// The provider's own API, when the kind has one.
    pub fn default_base_url(self) -> Option<&'static str> {
        match self {
            ProviderKind::Openai => Some("https://api.openai.com/v1"),
            ProviderKind::Anthropic => Some("https://api.anthropic.com"),
            ProviderKind::Gemini => Some("https://generativelanguage.googleapis.com/v1beta"),
            ProviderKind::OpenaiCompatible => None,
        }
    }
}

/// Keys one provider may hold, at most.
pub const PROVIDER_KEYS_MAX: usize = 64;
/// Longest API key accepted.
pub const PROVIDER_KEY_MAX_BYTES: usize = 4096;

/// A provider as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProviderSpec {
    #[schema(pattern = "^[a-z0-9][a-z0-9-]{0,62}$")]
    pub slug: String,
    pub kind: ProviderKind,
    /// Required for `openai_compatible`; the kind's own API otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_url: Option<String>,
    /// A preset of the built-in catalogue (`groq`, `mistral`…): its base
    /// URL is the default and its models and prices apply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preset: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

impl ProviderSpec {
    pub fn validate(&self) -> Result<(), FieldErrors> {
        let mut errors = FieldErrors::new();
        check_own_slug(&mut errors, "slug", &self.slug);
        check_text(&mut errors, "name", self.name.as_ref());
        check_text(&mut errors, "description", self.description.as_ref());
        match &self.base_url {
            Some(url) => {
                if let Err(message) = check_target_url(url) {
                    errors.add("base_url", message);
                }
            }
            None if self.kind.default_base_url().is_none() && self.preset.is_none() => {
                errors.add(
                    "base_url",
                    "is required for an openai_compatible provider without a preset",
                );
            }
            None => {}
        }
        errors.into_result()
    }

    /// Where requests go: its own base URL, else its preset's (from
    /// `catalog`), else its kind's.
    pub fn base_url<'a>(&'a self, catalog: &'a crate::catalog::Catalog) -> Option<&'a str> {
        self.base_url
            .as_deref()
            .or_else(|| {
                let preset = self.preset.as_deref()?;
                catalog
                    .providers
                    .iter()
                    .find(|p| p.slug == preset)
                    .map(|p| p.base_url.as_str())
            })
            .or_else(|| self.kind.default_base_url())
    }
}

/// A stored provider.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Provider {
    pub id: String,
    #[serde(flatten)]
    pub spec: ProviderSpec,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

/// One key of a provider's pool, as shown: never the key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ProviderKey {
    pub id: String,
    pub label: Option<String>,
    /// `…` and the key's last four characters.
    pub hint: String,
    pub created_at_ms: i64,
}

/// A key as given (once).
#[derive(Debug, Clone, PartialEq, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProviderKeySpec {
    /// The provider's API key; stored sealed, never shown again.
    pub key: String,
    #[serde(default)]
    pub label: Option<String>,
}

impl ProviderKeySpec {
    pub fn validate(&self) -> Result<(), FieldErrors> {
        let mut errors = FieldErrors::new();
        let key = self.key.trim();
        if key.len() < 8 || key.len() > PROVIDER_KEY_MAX_BYTES {
            errors.add(
                "key",
                format!("must be 8 to {PROVIDER_KEY_MAX_BYTES} characters"),
            );
        } else if key.chars().any(char::is_control) || key.contains(' ') {
            errors.add("key", "must not contain spaces or control characters");
        }
        check_text(&mut errors, "label", self.label.as_ref());
        errors.into_result()
    }

    /// What is shown of the key: its last four characters.
    pub fn hint(&self) -> String {
        let key = self.key.trim();
        let tail: String = key
            .chars()
            .rev()
            .take(4)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        format!("…{tail}")
    }
}

/// The catalogue preset whose models a provider has: its `preset`, else the
/// one of its kind (`openai`, `anthropic`, `gemini`).
pub fn preset_of(spec: &ProviderSpec) -> Option<&str> {
    spec.preset.as_deref().or(match spec.kind {
        ProviderKind::Openai => Some("openai"),
        ProviderKind::Anthropic => Some("anthropic"),
        ProviderKind::Gemini => Some("gemini"),
        ProviderKind::OpenaiCompatible => None,
    })
}

/// A provider's model as served: from the catalogue, overridden, or added.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ModelView {
    pub model: String,
    /// `catalog`, `override` (catalogue model with the operator's prices)
    /// or `custom` (added by the operator).
    pub origin: &'static str,
    pub context_window: Option<u64>,
    pub max_output_tokens: Option<u64>,
    pub modalities: Option<crate::catalog::Modalities>,
    /// USD per million tokens, decimal strings.
    pub input_per_million: String,
    pub output_per_million: String,
    pub cached_input_per_million: Option<String>,
    /// Where a catalogue price comes from, and when it held.
    pub source: Option<String>,
    pub as_of: Option<String>,
}

fn catalog_view(model: &crate::catalog::CatalogModel) -> ModelView {
    ModelView {
        model: model.model.clone(),
        origin: "catalog",
        context_window: Some(model.context_window),
        max_output_tokens: model.max_output_tokens,
        modalities: Some(model.modalities.clone()),
        input_per_million: model.price.input_per_million.clone(),
        output_per_million: model.price.output_per_million.clone(),
        cached_input_per_million: model.price.cached_input_per_million.clone(),
        source: Some(model.price.source.clone()),
        as_of: Some(model.price.as_of.clone()),
    }
}

pub fn own_view(own: &ProviderModel, base: Option<&crate::catalog::CatalogModel>) -> ModelView {
    let spec = &own.spec;
    ModelView {
        model: own.model.clone(),
        origin: if base.is_some() { "override" } else { "custom" },
        context_window: spec.context_window.or(base.map(|b| b.context_window)),
        max_output_tokens: spec
            .max_output_tokens
            .or(base.and_then(|b| b.max_output_tokens)),
        modalities: spec
            .modalities
            .clone()
            .or_else(|| base.map(|b| b.modalities.clone())),
        input_per_million: spec.input_per_million.clone(),
        output_per_million: spec.output_per_million.clone(),
        cached_input_per_million: spec.cached_input_per_million.clone(),
        source: None,
        as_of: None,
    }
}

/// The models a provider serves: its preset's catalogue models, with the
/// operator's overrides and additions.
pub fn effective_models(
    catalog: &crate::catalog::Catalog,
    spec: &ProviderSpec,
    own: &[ProviderModel],
) -> Vec<ModelView> {
    let preset = preset_of(spec);
    let base = |name: &str| preset.and_then(|preset| catalog.model(preset, name));
    let mut models: Vec<ModelView> = catalog
        .models
        .iter()
        .filter(|m| Some(m.provider.as_str()) == preset)
        .filter(|m| !own.iter().any(|o| o.model == m.model))
        .map(catalog_view)
        .collect();
    models.extend(own.iter().map(|o| own_view(o, base(&o.model))));
    models.sort_by(|a, b| a.model.cmp(&b.model));
    models
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compatible_providers_need_a_base_url() {
        let spec: ProviderSpec = serde_json::from_value(
            serde_json::json!({"slug": "groq", "kind": "openai_compatible"}),
        )
        .unwrap();
        assert!(spec.validate().is_err());
        let spec: ProviderSpec =
            serde_json::from_value(serde_json::json!({"slug": "openai", "kind": "openai"}))
                .unwrap();
        assert!(spec.validate().is_ok());
        assert_eq!(
            spec.base_url(&crate::catalog::Catalog::default()),
            Some("https://api.openai.com/v1")
        );
    }

    #[test]
    fn keys_show_only_their_end() {
        let key = ProviderKeySpec {
            key: "sk-proj-abcdefgh1234".into(),
            label: None,
        };
        assert!(key.validate().is_ok());
        assert_eq!(key.hint(), "…1234");
        let short = ProviderKeySpec {
            key: "abc".into(),
            label: None,
        };
        assert!(short.validate().is_err());
    }
}

/// A model an operator adds to a provider or whose catalogue entry it
/// overrides: prices per million tokens (decimal strings, USD), and
/// optionally the window and modalities.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    pub input_per_million: String,
    pub output_per_million: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_input_per_million: Option<String>,
    /// Required for a model the catalogue does not know.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_window: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_output_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modalities: Option<crate::catalog::Modalities>,
}

/// Longest model name accepted.
pub const MODEL_NAME_MAX: usize = 200;

impl ModelSpec {
    pub fn validate(&self, model: &str) -> Result<(), FieldErrors> {
        use crate::money::{Sign, parse};
        let mut errors = FieldErrors::new();
        if model.is_empty()
            || model.len() > MODEL_NAME_MAX
            || model.chars().any(|c| c.is_control() || c.is_whitespace())
        {
            errors.add(
                "model",
                format!("must be 1 to {MODEL_NAME_MAX} characters without spaces"),
            );
        }
        for (field, value) in [
            ("input_per_million", Some(&self.input_per_million)),
            ("output_per_million", Some(&self.output_per_million)),
            (
                "cached_input_per_million",
                self.cached_input_per_million.as_ref(),
            ),
        ] {
            if let Some(text) = value
                && let Err(error) = parse(text, Sign::NonNegative)
            {
                errors.add(field, error.to_string());
            }
        }
        if self.context_window == Some(0) {
            errors.add("context_window", "must be above zero");
        }
        errors.into_result()
    }
}

/// A stored model of a provider.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ProviderModel {
    pub provider_id: String,
    pub model: String,
    #[serde(flatten)]
    pub spec: ModelSpec,
    pub updated_at_ms: i64,
}
