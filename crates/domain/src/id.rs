//! Identifiers: UUID v7 text ids (time-ordered, so they sort by creation) and
//! human-typed slugs (`[a-z0-9][a-z0-9-]{0,62}`).

/// A new object id: a UUID v7 in its lowercase hyphenated text form.
pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// Whether `text` is shaped like an id made by [`new_id`].
pub fn looks_like_id(text: &str) -> bool {
    text.len() == 36 && uuid::Uuid::try_parse(text).is_ok()
}

/// Whether `text` is a valid slug: `[a-z0-9][a-z0-9-]{0,62}`.
pub fn is_slug(text: &str) -> bool {
    let bytes = text.as_bytes();
    if bytes.is_empty() || bytes.len() > 63 {
        return false;
    }
    let allowed = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    allowed(bytes[0]) && bytes[1..].iter().all(|&b| allowed(b) || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs() {
        for good in ["a", "acme", "weather-backend", "0x", &"a".repeat(63)] {
            assert!(is_slug(good), "{good}");
        }
        for bad in ["", "-a", "A", "a_b", "a b", "é", &"a".repeat(64)] {
            assert!(!is_slug(bad), "{bad}");
        }
    }

    #[test]
    fn ids_are_ordered_and_recognised() {
        let first = new_id();
        let second = new_id();
        assert!(looks_like_id(&first));
        assert!(!looks_like_id("weather"));
        assert!(first < second, "v7 ids sort by creation");
    }
}
