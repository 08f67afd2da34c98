//! Field-level validation errors, collected so that one response can name
//! every offending field at once.

use std::fmt;

/// One problem with one field. `field` is a path such as `targets[0].url`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

/// An accumulator of [`FieldError`]s.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FieldErrors(pub Vec<FieldError>);

impl FieldErrors {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn add(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError {
            field: field.into(),
            message: message.into(),
        });
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `Ok(())` when nothing was added, otherwise the errors.
    pub fn into_result(self) -> Result<(), FieldErrors> {
        if self.0.is_empty() { Ok(()) } else { Err(self) }
    }
}

impl fmt::Display for FieldErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, error) in self.0.iter().enumerate() {
            if index > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{}: {}", error.field, error.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for FieldErrors {}

/// "a" or "an" before `word`, by its first letter (enough for the state
/// names messages put after it: "an active", "a pending").
pub fn article(word: &str) -> &'static str {
    match word.bytes().next().map(|b| b.to_ascii_lowercase()) {
        Some(b'a' | b'e' | b'i' | b'o' | b'u') => "an",
        _ => "a",
    }
}

#[cfg(test)]
mod article_tests {
    #[test]
    fn picks_the_article_by_sound_of_the_first_letter() {
        assert_eq!(super::article("active"), "an");
        assert_eq!(super::article("expired"), "an");
        assert_eq!(super::article("pending"), "a");
        assert_eq!(super::article("suspended"), "a");
    }
}
