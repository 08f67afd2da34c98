//! Prompt APIs (SPEC §7): a service of kind `prompt` wraps a model call
//! behind a plain REST endpoint. A caller POSTs a JSON object of
//! variables to the service's base path; they are checked against the
//! declared schema, rendered into the system and user templates
//! (minijinja: variables, conditionals, loops, filters), and the model's
//! answer comes back as `{"output", "usage", "cost"}` — with an output
//! schema, `output` is the parsed object.

use serde::{Deserialize, Serialize};

use crate::validate::FieldErrors;

/// Longest template accepted, in bytes.
pub const TEMPLATE_MAX_BYTES: usize = 64 * 1024;
/// Instructions one rendering may run (loops over large variables stop).
pub const TEMPLATE_FUEL: u64 = 200_000;

/// What a prompt service does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PromptSpec {
    /// `<provider>/<model>`, or an alias of an AI service of the same team
    /// (or a platform one).
    pub model: String,
    /// The system message's template (optional).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    /// The user message's template.
    pub user: String,
    /// JSON schema of the variables (an object schema).
    #[serde(default = "PromptSpec::default_variables")]
    #[schema(value_type = Object)]
    pub variables: serde_json::Value,
    #[serde(default, skip_serializing_if = "PromptParameters::is_empty")]
    pub parameters: PromptParameters,
    #[serde(default)]
    pub output: PromptOutput,
}

/// Sampling parameters sent with every call.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PromptParameters {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u64>,
}

impl PromptParameters {
    fn is_empty(&self) -> bool {
        self.temperature.is_none() && self.max_tokens.is_none()
    }
}

/// What the call returns: the model's text, or an object that validates
/// against `schema` (asked of the provider as structured output).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum PromptOutput {
    #[default]
    Text,
    Json {
        #[schema(value_type = Object)]
        schema: serde_json::Value,
    },
}

impl PromptSpec {
    fn default_variables() -> serde_json::Value {
        serde_json::json!({"type": "object"})
    }

    /// Checks the spec; `check_schema` checks a JSON schema (the gateway's
    /// validator says which keywords it knows).
    pub fn validate(
        &self,
        errors: &mut FieldErrors,
        check_schema: &dyn Fn(&serde_json::Value) -> Result<(), String>,
    ) {
        let model_ok = crate::ai::split_model(&self.model).is_some()
            || (!self.model.is_empty()
                && self.model.len() <= 100
                && self
                    .model
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b)));
        if !model_ok {
            errors.add(
                "prompt.model",
                "must be <provider>/<model> or the name of an AI service's alias",
            );
        }
        for (field, template) in [
            ("prompt.system", self.system.as_deref()),
            ("prompt.user", Some(self.user.as_str())),
        ] {
            if let Some(text) = template
                && let Err(message) = check_template(text)
            {
                errors.add(field, message);
            }
        }
        if self.user.trim().is_empty() {
            errors.add("prompt.user", "must not be empty");
        }
        if self.variables.get("type").and_then(|t| t.as_str()) != Some("object") {
            errors.add(
                "prompt.variables",
                "must be a JSON schema of type \"object\"",
            );
        } else if let Err(message) = check_schema(&self.variables) {
            errors.add("prompt.variables", message);
        }
        if let Some(t) = self.parameters.temperature
            && !(0.0..=2.0).contains(&t)
        {
            errors.add("prompt.parameters.temperature", "must be from 0 to 2");
        }
        if self.parameters.max_tokens == Some(0) {
            errors.add("prompt.parameters.max_tokens", "must be at least 1");
        }
        if let PromptOutput::Json { schema } = &self.output {
            if !schema.is_object() {
                errors.add("prompt.output.schema", "must be a JSON schema object");
            } else if let Err(message) = check_schema(schema) {
                errors.add("prompt.output.schema", message);
            }
        }
    }

    /// The system and user messages for these variables.
    pub fn render(
        &self,
        variables: &serde_json::Value,
    ) -> Result<(Option<String>, String), String> {
        let system = self
            .system
            .as_deref()
            .map(|text| render(text, variables))
            .transpose()?;
        Ok((system, render(&self.user, variables)?))
    }
}

fn environment() -> minijinja::Environment<'static> {
    let mut env = minijinja::Environment::new();
    // A variable the caller did not send may be tested (`{% if x %}`) but
    // not printed.
    env.set_undefined_behavior(minijinja::UndefinedBehavior::SemiStrict);
    // Loops over a caller's arrays are bounded.
    env.set_fuel(Some(TEMPLATE_FUEL));
    env
}

/// Compiles a template; the error names its line and column.
pub fn check_template(text: &str) -> Result<(), String> {
    if text.len() > TEMPLATE_MAX_BYTES {
        return Err(format!("must be at most {TEMPLATE_MAX_BYTES} bytes"));
    }
    let env = environment();
    env.template_from_str(text)
        .map(|_| ())
        .map_err(|error| describe(text, &error))
}

fn render(text: &str, variables: &serde_json::Value) -> Result<String, String> {
    let env = environment();
    let template = env
        .template_from_str(text)
        .map_err(|error| describe(text, &error))?;
    template
        .render(minijinja::Value::from_serialize(variables))
        .map_err(|error| describe(text, &error))
}

/// A template error with its line and column (1-based).
fn describe(text: &str, error: &minijinja::Error) -> String {
    let kind = error.kind().to_string();
    let what = error.detail().unwrap_or(&kind);
    match (error.line(), error.range()) {
        (Some(line), Some(range)) => {
            let start = range.start.min(text.len());
            let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
            let column = text[line_start..start].chars().count() + 1;
            format!("template error at line {line}, column {column}: {what}")
        }
        (Some(line), None) => format!("template error at line {line}: {what}"),
        _ => format!("template error: {what}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(user: &str) -> PromptSpec {
        serde_json::from_value(serde_json::json!({
            "model": "openai/gpt-4o-mini",
            "system": "You translate into {{ language }}.",
            "user": user,
            "variables": {"type": "object", "required": ["text"], "properties": {"text": {"type": "string"}}}
        }))
        .unwrap()
    }

    #[test]
    fn renders_variables_conditionals_and_loops() {
        let spec = spec(
            "{% if formal %}Dear reader,{% endif %}\n{% for line in lines %}- {{ line | upper }}\n{% endfor %}{{ text }}",
        );
        let (system, user) = spec
            .render(&serde_json::json!({"language": "French", "formal": true, "lines": ["a", "b"], "text": "hi"}))
            .unwrap();
        assert_eq!(system.as_deref(), Some("You translate into French."));
        assert_eq!(user, "Dear reader,\n- A\n- B\nhi");
        let missing = spec.render(&serde_json::json!({"text": "x"})).unwrap_err();
        assert!(missing.contains("undefined"), "{missing}");
        // An optional variable left out may be tested.
        let (_, user) = spec
            .render(&serde_json::json!({"language": "French", "lines": [], "text": "hi"}))
            .unwrap();
        assert_eq!(user, "\nhi");
        // Loops are bounded.
        let heavy = PromptSpec {
            user: "{% for a in xs %}{% for b in xs %}{% for c in xs %}.{% endfor %}{% endfor %}{% endfor %}".into(),
            system: None,
            ..spec.clone()
        };
        let many: Vec<u32> = (0..200).collect();
        assert!(heavy.render(&serde_json::json!({"xs": many})).is_err());
    }

    #[test]
    fn template_errors_name_line_and_column() {
        let error = check_template("Hello\n  {% if x %}never closed").unwrap_err();
        assert!(error.contains("line 2"), "{error}");
        let error = check_template("one {{ x + }}").unwrap_err();
        assert!(error.contains("line 1, column"), "{error}");
        let mut errors = FieldErrors::new();
        spec("{{ broken").validate(&mut errors, &|_| Ok(()));
        let text = format!("{:?}", errors.into_result().unwrap_err());
        assert!(text.contains("prompt.user"), "{text}");
    }
}
