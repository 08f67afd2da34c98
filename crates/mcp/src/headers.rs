//! Reading the few HTTP header values the transport looks at. Plain strings in,
//! plain answers out: the gateway owns the HTTP types.

/// Whether an `Accept` value admits `wanted` (`type/subtype`, lower case).
/// No header admits everything (RFC 9110 §12.5.1); a range with `q=0` is
/// excluded.
pub(crate) fn accepts(accept: Option<&str>, wanted: &str) -> bool {
    let Some(accept) = accept else {
        return true;
    };
    let (wanted_type, _) = wanted.split_once('/').unwrap_or((wanted, ""));
    accept.split(',').any(|range| {
        let mut parts = range.split(';');
        let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let refused = parts.any(|param| {
            let param = param.trim();
            param
                .strip_prefix("q=")
                .or_else(|| param.strip_prefix("Q="))
                .and_then(|q| q.trim().parse::<f32>().ok())
                .is_some_and(|q| q <= 0.0)
        });
        if refused {
            return false;
        }
        media == wanted
            || media == "*/*"
            || media
                .strip_suffix("/*")
                .is_some_and(|media_type| media_type == wanted_type)
    })
}

/// Whether a `Content-Type` value names JSON (`application/json`, any
/// parameters). No header is taken as JSON.
pub(crate) fn is_json_content_type(content_type: Option<&str>) -> bool {
    let Some(content_type) = content_type else {
        return true;
    };
    let media = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    media == "application/json"
}

/// RFC 9110 field value characters: visible ASCII, space and tab.
pub(crate) fn valid_field_value(value: &str) -> bool {
    value
        .bytes()
        .all(|b| b == b'\t' || b == b' ' || (0x21..=0x7e).contains(&b))
}

const BASE64_PREFIX: &str = "=?base64?";
const BASE64_SUFFIX: &str = "?=";

/// Decodes the 2026-07-28 header value encoding: `=?base64?…?=` wraps the
/// standard Base64 of UTF-8 text; anything else is the value itself. `None`
/// when the wrapped text is not valid Base64 or not UTF-8.
pub(crate) fn decode_sentinel(value: &str) -> Option<String> {
    let Some(inner) = value
        .strip_prefix(BASE64_PREFIX)
        .and_then(|rest| rest.strip_suffix(BASE64_SUFFIX))
    else {
        return Some(value.to_owned());
    };
    String::from_utf8(base64_decode(inner)?).ok()
}

/// Standard Base64 (RFC 4648 §4) with optional padding.
pub(crate) fn base64_decode(text: &str) -> Option<Vec<u8>> {
    fn sextet(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    }
    let trimmed = text.trim_end_matches('=');
    if text.len() - trimmed.len() > 2
        || (text.len() != trimmed.len() && !text.len().is_multiple_of(4))
    {
        return None;
    }
    let bytes = trimmed.as_bytes();
    if bytes.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut acc = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            acc |= sextet(c)? << (18 - 6 * i as u32);
        }
        let produced = chunk.len() - 1;
        let all = acc.to_be_bytes();
        out.extend_from_slice(&all[1..1 + produced]);
        // Leftover bits must be zero in canonical Base64.
        let unused_bits = match chunk.len() {
            2 => acc & 0xffff,
            3 => acc & 0xff,
            _ => 0,
        };
        if unused_bits != 0 {
            return None;
        }
    }
    Some(out)
}
