//! Path patterns of routes: literal segments, `{name}` parameters and a
//! trailing `/*` prefix wildcard. Parsed once here; the admin API uses the
//! parser to validate and the gateway compiles the result into its matcher.

/// One segment of a parsed pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    Literal(String),
    Param(String),
    /// `/*`: matches the rest of the path, including nothing.
    Wildcard,
}

/// Parses a route path (`/forecast/{city}`, `/files/*`). The empty path and
/// `/` parse to no segments.
pub fn parse_pattern(pattern: &str) -> Result<Vec<Segment>, String> {
    if !pattern.starts_with('/') {
        return Err("must start with '/'".into());
    }
    if pattern.len() > 1024 {
        return Err("must be at most 1024 characters".into());
    }
    let mut segments = Vec::new();
    let mut names = std::collections::HashSet::new();
    let parts: Vec<&str> = pattern[1..].split('/').collect();
    let last = parts.len() - 1;
    for (index, part) in parts.iter().enumerate() {
        if part.is_empty() {
            if index == last {
                // A trailing slash (or the root path) adds no segment.
                break;
            }
            return Err("must not contain empty segments ('//')".into());
        }
        if matches!(*part, "." | "..") {
            return Err("must not contain '.' or '..' segments".into());
        }
        if *part == "*" {
            if index != last {
                return Err("'*' is allowed only as the last segment ('/prefix/*')".into());
            }
            segments.push(Segment::Wildcard);
        } else if let Some(inner) = part.strip_prefix('{') {
            let Some(name) = inner.strip_suffix('}') else {
                return Err(format!("segment '{part}' opens '{{' without closing it"));
            };
            let valid = !name.is_empty()
                && name.len() <= 64
                && name
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                return Err(format!(
                    "parameter name '{name}' must match [A-Za-z_][A-Za-z0-9_]*"
                ));
            }
            if !names.insert(name.to_owned()) {
                return Err(format!("parameter '{name}' appears twice"));
            }
            segments.push(Segment::Param(name.to_owned()));
        } else {
            if part.contains(['{', '}', '*', '?', '#']) {
                return Err(format!(
                    "segment '{part}' mixes literal text with '{{', '}}', '*', '?' or '#'"
                ));
            }
            // Requests are matched on their path as sent: a space, a
            // non-ASCII letter or a `%` escape in a pattern would match no
            // well-formed request (or, as `%2e%2e`, smuggle a `..`).
            if let Some(bad) = part.chars().find(|&c| !is_path_char(c)) {
                return Err(format!(
                    "segment '{part}' has '{bad}': use letters, digits and -._~!$&'()+,;=:@ only (no spaces, '%' escapes or non-ASCII)"
                ));
            }
            segments.push(Segment::Literal((*part).to_owned()));
        }
    }
    Ok(segments)
}

/// RFC 3986 `pchar` without `%` escapes: unreserved, sub-delims, `:`, `@`.
fn is_path_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-._~!$&'()+,;=:@".contains(c)
}

/// Whether a request path has a `.` or `..` segment, also written with
/// `%2e`, or with `%2f` or `\` as a separator. Once resolved (RFC 3986
/// §5.2.4, as many servers do) such a path names another one, so routing
/// on it as written would let a request leave its route and its target's
/// base path.
pub fn has_dot_segment(path: &str) -> bool {
    if !path.contains(['.', '%']) {
        return false;
    }
    let decoded = path
        .to_ascii_lowercase()
        .replace("%2e", ".")
        .replace("%2f", "/")
        .replace("%5c", "/")
        .replace('\\', "/");
    decoded
        .split('/')
        .any(|segment| segment == "." || segment == "..")
}

/// Whether the path has a `%` that starts no escape (`%zz`, a `%` at the
/// end) or an escaped NUL (`%00`): not a URI path (RFC 3986 §2.1), and
/// the NUL cuts strings short in many upstreams. nginx answers 400 alike.
pub fn has_bad_escape(path: &str) -> bool {
    let bytes = path.as_bytes();
    bytes.iter().enumerate().any(|(index, &byte)| {
        byte == b'%'
            && match bytes.get(index + 1..index + 3) {
                Some([high, low]) => {
                    !(high.is_ascii_hexdigit() && low.is_ascii_hexdigit())
                        || (*high == b'0' && *low == b'0')
                }
                _ => true,
            }
    })
}

/// The path with each `%` escape of an unreserved character (letters,
/// digits, `-._~`) decoded, and the hex digits of the other escapes in
/// upper case (RFC 3986 §6.2.2: the same URI), or `None` when it is
/// already so. Routes match a request's path as sent, so `/svc/%61dmin`
/// would otherwise miss the route `/svc/admin` (and its limits) while the
/// upstream reads it as that path. Escaped `/` (`%2F`) stays escaped: it
/// is a character of a segment, not a separator.
pub fn normalise_escapes(path: &str) -> Option<String> {
    if !path.contains('%') {
        return None;
    }
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut changed = false;
    let mut index = 0;
    while index < bytes.len() {
        let escape = (bytes[index] == b'%')
            .then(|| path.get(index + 1..index + 3))
            .flatten()
            .filter(|hex| hex.bytes().all(|b| b.is_ascii_hexdigit()));
        let Some(hex) = escape else {
            out.push(bytes[index]);
            index += 1;
            continue;
        };
        let value = u8::from_str_radix(hex, 16).unwrap_or_default();
        if value.is_ascii_alphanumeric() || b"-._~".contains(&value) {
            out.push(value);
            changed = true;
        } else {
            out.push(b'%');
            out.extend(hex.bytes().map(|b| b.to_ascii_uppercase()));
            changed |= hex.bytes().any(|b| b.is_ascii_lowercase());
        }
        index += 3;
    }
    // Only ASCII was put in place of ASCII: still UTF-8.
    changed.then(|| String::from_utf8(out).ok()).flatten()
}

/// Validates a service base path: literal segments only, no trailing slash
/// (except `/` itself).
pub fn validate_base_path(base_path: &str) -> Result<(), String> {
    let segments = parse_pattern(base_path)?;
    if segments.iter().any(|s| !matches!(s, Segment::Literal(_))) {
        return Err("must contain only literal segments (no '{param}' or '*')".into());
    }
    if base_path.len() > 1 && base_path.ends_with('/') {
        return Err("must not end with '/'".into());
    }
    Ok(())
}

/// Joins a base path and a route path into the full public pattern.
pub fn join(base_path: &str, route_path: &str) -> String {
    let base = base_path.trim_end_matches('/');
    if route_path == "/" || route_path.is_empty() {
        if base.is_empty() {
            "/".to_owned()
        } else {
            base.to_owned()
        }
    } else {
        format!("{base}{route_path}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_escapes_are_found() {
        for bad in ["/a%zz", "/a%", "/a%4", "/a%00b", "/%0"] {
            assert!(has_bad_escape(bad), "{bad}");
        }
        for good in ["/a", "/a%20b", "/%2F", "/%ff%41", "/100%25"] {
            assert!(!has_bad_escape(good), "{good}");
        }
    }

    #[test]
    fn parses_patterns() {
        use Segment::*;
        assert_eq!(parse_pattern("/").unwrap(), vec![]);
        assert_eq!(
            parse_pattern("/forecast/{city}").unwrap(),
            vec![Literal("forecast".into()), Param("city".into())]
        );
        assert_eq!(
            parse_pattern("/files/*").unwrap(),
            vec![Literal("files".into()), Wildcard]
        );
        assert_eq!(parse_pattern("/*").unwrap(), vec![Wildcard]);
    }

    #[test]
    fn refuses_bad_patterns() {
        for bad in [
            "forecast", "/a//b", "/a/*/b", "/{x", "/{1x}", "/{a}/{a}", "/a{b}", "/a?b", "/a/../b",
            "/./a", "/a/..",
        ] {
            assert!(parse_pattern(bad).is_err(), "{bad}");
        }
        assert!(validate_base_path("/weather").is_ok());
        assert!(validate_base_path("/").is_ok());
        assert!(validate_base_path("/weather/").is_err());
        assert!(validate_base_path("/w/{x}").is_err());
    }

    #[test]
    fn joins() {
        assert_eq!(
            join("/weather", "/forecast/{city}"),
            "/weather/forecast/{city}"
        );
        assert_eq!(join("/", "/x"), "/x");
        assert_eq!(join("/weather", "/"), "/weather");
        assert_eq!(join("/", "/"), "/");
    }
}

#[cfg(test)]
mod dot_tests {
    use super::*;

    #[test]
    fn unreserved_escapes_are_decoded_and_the_rest_upper_cased() {
        assert_eq!(normalise_escapes("/svc/admin"), None);
        assert_eq!(normalise_escapes("/svc/a%2Fb%20c"), None, "already normal");
        assert_eq!(
            normalise_escapes("/svc/%61dmin").as_deref(),
            Some("/svc/admin")
        );
        assert_eq!(
            normalise_escapes("/s%76c/%7E%2d%5F%2E%41%7a%30").as_deref(),
            Some("/svc/~-_.Az0")
        );
        assert_eq!(
            normalise_escapes("/a%2fb%c3%a9").as_deref(),
            Some("/a%2Fb%C3%A9")
        );
        // Not escapes: left as they are.
        assert_eq!(normalise_escapes("/a%"), None);
        assert_eq!(normalise_escapes("/a%4"), None);
        assert_eq!(normalise_escapes("/a%zz%41").as_deref(), Some("/a%zzA"));
    }

    #[test]
    fn dot_segments_are_found_however_written() {
        for path in [
            "/a/../b",
            "/a/..",
            "/a/./b",
            "/a/%2e%2e/b",
            "/a/%2E%2e",
            "/a/.%2e/b",
            "/a/..%2fb",
            "/a/..%5Cb",
            "/a/..\\b",
        ] {
            assert!(has_dot_segment(path), "{path}");
        }
        for path in [
            "/a/b",
            "/a/.well-known/x",
            "/a/b.json",
            "/a/...",
            "/v1.2/x",
            "/a%20b",
        ] {
            assert!(!has_dot_segment(path), "{path}");
        }
    }

    #[test]
    fn patterns_hold_only_characters_sent_as_they_are() {
        assert!(parse_pattern("/caf\u{e9}").is_err());
        assert!(parse_pattern("/my report").is_err());
        assert!(parse_pattern("/a/%2e%2e").is_err());
        assert!(parse_pattern("/v1.2/items/{id}").is_ok());
        assert!(parse_pattern("/a:b@c/~x").is_ok());
    }
}
