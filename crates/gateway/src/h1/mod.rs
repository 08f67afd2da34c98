//! HTTP/1.1 on both sides of the proxy, written for what a gateway does
//! most: small heads, keep-alive, bodies passed through as they come.
//!
//! - [`server`]: the client-facing connection loop (every HTTP/1.x
//!   connection; HTTP/2 with prior knowledge goes to hyper).
//! - [`client`]: upstream connections, pooled per worker thread and driven
//!   by the request that uses them (no connection task, no channel).
//!
//! Both parse heads with `httparse`, keep header values as slices of the
//! bytes read (no copy), and write a head and the first part of its body
//! in one `write`. This module holds what they share: body framing
//! ([`Framing`]), chunked encoding and the cached `Date` value.

pub mod client;
pub mod server;

use std::cell::RefCell;
use std::ops::Range;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Largest head (request or status line plus headers) accepted.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Most header fields accepted in one head.
pub const MAX_HEADERS: usize = 128;

/// The refusal of a request head past [`MAX_HEAD_BYTES`] or
/// [`MAX_HEADERS`] (an HTTP/2 header list is held to the same limits).
pub(crate) fn headers_too_large() -> crate::refusal::Refusal {
    crate::refusal::Refusal::new(
        domain::code::Code::HeadersTooLarge,
        format!(
            "The request head is larger than the gateway accepts ({MAX_HEAD_BYTES} bytes, {MAX_HEADERS} fields). Send fewer or smaller headers."
        ),
    )
}
/// Longest chunk-size line.
const MAX_LINE_BYTES: usize = 4096;
/// Most trailer bytes read after a chunked body (a trailer line may be as
/// long): as much as a head may hold.
const MAX_TRAILER_BYTES: usize = MAX_HEAD_BYTES;

/// How a message body is delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body, or the body has been read to its end.
    Done,
    /// `Content-Length`: bytes still to come.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked(Chunk),
    /// Until the connection closes (responses only).
    Eof,
}

/// Where a chunked body's reader stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunk {
    Size,
    Data(u64),
    DataEnd,
    Trailers(usize),
}

/// What [`Framing::step`] found in the buffer.
#[derive(Debug)]
pub enum Step {
    Data(Bytes),
    /// One trailer field line of a chunked body (its line end included),
    /// for a reader that passes trailers on; others skip it.
    Trailer(Bytes),
    /// The buffer holds no more of the body; read more.
    More,
    /// The body is complete.
    End,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FramingError {
    #[error("malformed chunked encoding")]
    Chunked,
    #[error("the connection closed before the body ended")]
    Truncated,
}

impl Framing {
    /// `Chunked` at its start.
    pub const CHUNKED: Framing = Framing::Chunked(Chunk::Size);

    /// Takes from `buf` what it holds of the body. Never copies data:
    /// returned bytes are split off the buffer.
    pub fn step(&mut self, buf: &mut BytesMut) -> Result<Step, FramingError> {
        loop {
            match self {
                Framing::Done => return Ok(Step::End),
                Framing::Length(0) => {
                    *self = Framing::Done;
                    return Ok(Step::End);
                }
                Framing::Length(left) => {
                    if buf.is_empty() {
                        return Ok(Step::More);
                    }
                    let take = (*left).min(buf.len() as u64) as usize;
                    *left -= take as u64;
                    return Ok(Step::Data(buf.split_to(take).freeze()));
                }
                Framing::Eof => {
                    if buf.is_empty() {
                        return Ok(Step::More);
                    }
                    return Ok(Step::Data(buf.split().freeze()));
                }
                Framing::Chunked(state) => match state {
                    Chunk::Size => {
                        let Some(end) = find_line(buf, MAX_LINE_BYTES)? else {
                            return Ok(Step::More);
                        };
                        let size = parse_chunk_size(&buf[..end])?;
                        buf.advance(end + 1);
                        *state = if size == 0 {
                            Chunk::Trailers(0)
                        } else {
                            Chunk::Data(size)
                        };
                    }
                    Chunk::Data(left) => {
                        if buf.is_empty() {
                            return Ok(Step::More);
                        }
                        let take = (*left).min(buf.len() as u64) as usize;
                        *left -= take as u64;
                        let data = buf.split_to(take).freeze();
                        if *left == 0 {
                            *state = Chunk::DataEnd;
                        }
                        return Ok(Step::Data(data));
                    }
                    Chunk::DataEnd => match buf.first() {
                        None => return Ok(Step::More),
                        Some(b'\n') => {
                            buf.advance(1);
                            *state = Chunk::Size;
                        }
                        Some(b'\r') => match buf.get(1) {
                            None => return Ok(Step::More),
                            Some(b'\n') => {
                                buf.advance(2);
                                *state = Chunk::Size;
                            }
                            Some(_) => return Err(FramingError::Chunked),
                        },
                        Some(_) => return Err(FramingError::Chunked),
                    },
                    Chunk::Trailers(seen) => {
                        let Some(end) = find_line(buf, MAX_TRAILER_BYTES - *seen)? else {
                            return Ok(Step::More);
                        };
                        let blank = end == 0 || (end == 1 && buf[0] == b'\r');
                        *seen += end + 1;
                        if *seen > MAX_TRAILER_BYTES {
                            return Err(FramingError::Chunked);
                        }
                        if blank {
                            buf.advance(end + 1);
                            *self = Framing::Done;
                            return Ok(Step::End);
                        }
                        return Ok(Step::Trailer(buf.split_to(end + 1).freeze()));
                    }
                },
            }
        }
    }

    /// What the reader should do when the connection has closed.
    pub fn at_eof(&mut self) -> Result<Step, FramingError> {
        match self {
            Framing::Eof | Framing::Done => {
                *self = Framing::Done;
                Ok(Step::End)
            }
            _ => Err(FramingError::Truncated),
        }
    }

    pub fn is_done(&self) -> bool {
        matches!(self, Framing::Done | Framing::Length(0))
    }

    /// Exact length left, when known.
    pub fn exact_len(&self) -> Option<u64> {
        match self {
            Framing::Done => Some(0),
            Framing::Length(left) => Some(*left),
            _ => None,
        }
    }
}

/// Index of the next `\n` in `buf`, if there is one within the line limit.
fn find_line(buf: &[u8], limit: usize) -> Result<Option<usize>, FramingError> {
    match buf.iter().take(limit).position(|&b| b == b'\n') {
        Some(index) => Ok(Some(index)),
        None if buf.len() >= limit => Err(FramingError::Chunked),
        None => Ok(None),
    }
}

/// `1a3f[;ext]\r`: the hexadecimal size, extensions ignored.
fn parse_chunk_size(line: &[u8]) -> Result<u64, FramingError> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let digits = match line.iter().position(|&b| b == b';') {
        Some(index) => &line[..index],
        None => line,
    };
    let digits = digits.trim_ascii();
    if digits.is_empty() || digits.len() > 15 {
        return Err(FramingError::Chunked);
    }
    let mut size: u64 = 0;
    for &digit in digits {
        let value = match digit {
            b'0'..=b'9' => digit - b'0',
            b'a'..=b'f' => digit - b'a' + 10,
            b'A'..=b'F' => digit - b'A' + 10,
            _ => return Err(FramingError::Chunked),
        };
        size = (size << 4) | u64::from(value);
    }
    Ok(size)
}

/// Appends `data` as one chunk.
pub fn put_chunk(out: &mut BytesMut, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    let mut digits = [0u8; 16];
    let mut at = digits.len();
    let mut size = data.len();
    loop {
        at -= 1;
        digits[at] = b"0123456789abcdef"[size & 0xf];
        size >>= 4;
        if size == 0 {
            break;
        }
    }
    out.reserve(digits.len() - at + data.len() + 4);
    out.put_slice(&digits[at..]);
    out.put_slice(b"\r\n");
    out.put_slice(data);
    out.put_slice(b"\r\n");
}

/// The last chunk, without trailers.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// Appends `name: value\r\n` for every header.
pub fn put_headers(out: &mut BytesMut, headers: &HeaderMap) {
    for (name, value) in headers {
        put_header(out, name.as_str().as_bytes(), value.as_bytes());
    }
}

pub fn put_header(out: &mut BytesMut, name: &[u8], value: &[u8]) {
    out.reserve(name.len() + value.len() + 4);
    out.put_slice(name);
    out.put_slice(b": ");
    out.put_slice(value);
    out.put_slice(b"\r\n");
}

/// Appends a decimal number.
pub fn put_decimal(out: &mut BytesMut, value: u64) {
    out.put_slice(domain::money::decimal(value, &mut [0; 20]).as_bytes());
}

/// Where one header's name and value sit in the head's bytes.
pub(crate) type FieldRanges = (Range<usize>, Range<usize>);

/// The byte range of `part` within `base` (both from the same buffer).
pub(crate) fn range_in(base: &[u8], part: &[u8]) -> Range<usize> {
    let start = (part.as_ptr() as usize).saturating_sub(base.as_ptr() as usize);
    start..start + part.len()
}

/// Builds the header map from the head's bytes: values share `head`'s
/// memory; well-known names are not allocated.
///
/// `spare`: room for the headers the gateway will add, so that adding them
/// does not grow (rehash and copy) the map.
///
/// `connection`: what the head's `Connection` lines say (read while it
/// was parsed); when they name no other header, `Connection` and
/// `Keep-Alive` (hop-by-hop, removed before the message goes on) are left
/// out of the map, so the common head needs no removal later.
pub(crate) fn header_map(
    head: &Bytes,
    fields: &[FieldRanges],
    spare: usize,
    connection: &ConnectionTokens,
) -> Result<HeaderMap, HeadError> {
    let mut headers = HeaderMap::with_capacity(fields.len() + spare);
    let skip = !connection.others;
    for (name, value) in fields {
        let raw = &head[name.clone()];
        if skip && is_connection_or_keep_alive(raw) {
            continue;
        }
        let name = HeaderName::from_bytes(raw).map_err(|_| HeadError::Malformed)?;
        let value = HeaderValue::from_maybe_shared(head.slice(value.clone()))
            .map_err(|_| HeadError::Malformed)?;
        headers.append(name, value);
    }
    Ok(headers)
}

/// Interim (1xx) answers an upstream gave before its final one, for the
/// client's connection to write as they come (`103 Early Hints`; RFC 9110
/// §15.2: a proxy forwards them). One per connection ([`crate::pipeline::Peer`]);
/// the HTTP/1.1 server writes what it holds whenever the request it is
/// answering yields, and before the final answer. `100 Continue` is the
/// gateway's own business (it answers `Expect` itself) and never lands here.
#[derive(Debug, Default)]
pub struct Interim {
    pending: std::sync::atomic::AtomicBool,
    heads: std::sync::Mutex<BytesMut>,
}

impl Interim {
    /// Queues an interim head (status line to blank line).
    pub(crate) fn push(&self, head: &[u8]) {
        let mut heads = self.heads.lock().unwrap_or_else(|p| p.into_inner());
        heads.extend_from_slice(head);
        self.pending
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// What was queued since the last take; `None` (one atomic load) when
    /// nothing was.
    pub(crate) fn take(&self) -> Option<BytesMut> {
        // A plain load first: this runs each time a request is polled.
        if !self.pending.load(std::sync::atomic::Ordering::Relaxed)
            || !self
                .pending
                .swap(false, std::sync::atomic::Ordering::Acquire)
        {
            return None;
        }
        let mut heads = self.heads.lock().unwrap_or_else(|p| p.into_inner());
        Some(heads.split())
    }
}

/// An interim response's head as the client gets it: the status line,
/// then its fields less hop-by-hop ones.
pub(crate) fn interim_head(status: http::StatusCode, head: &[u8], fields: &[FieldRanges]) -> Bytes {
    let mut out = BytesMut::with_capacity(head.len() + 16);
    out.put_slice(b"HTTP/1.1 ");
    out.put_slice(status.as_str().as_bytes());
    out.put_u8(b' ');
    out.put_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.put_slice(b"\r\n");
    for (name, value) in fields {
        let name = &head[name.clone()];
        if !is_hop_by_hop_name(name) {
            put_header(&mut out, name, &head[value.clone()]);
        }
    }
    out.put_slice(b"\r\n");
    out.freeze()
}

/// An upstream response head kept as the bytes read: the common proxied
/// response goes back to the client line by line as it came (hop-by-hop
/// lines left out), and no header map is built, hashed or dropped for it.
///
/// The response's `HeaderMap` then holds only what the gateway adds, and a
/// name there replaces the upstream's lines of that name, as an `insert`
/// into a full map would. Code that reads, removes or records the
/// upstream's headers first calls [`crate::body::materialize`], which
/// folds the raw lines into the map.
///
/// Only heads whose `Connection` lines name no other header are kept raw
/// (the usual `keep-alive` and `close` name none); `Connection` and
/// `Keep-Alive` lines are left out of the fields.
#[derive(Debug)]
pub struct RawHead {
    head: Bytes,
    /// Name start and end, value start and end, in `head`.
    fields: smallvec::SmallVec<[[u32; 4]; 8]>,
    /// Index in `fields` of the last `Transfer-Encoding`, if any.
    last_coding: Option<usize>,
    /// How many `Content-Length` fields there are.
    lengths: usize,
    has_date: bool,
    /// The gateway's `X-Request-Id`, kept here rather than in the
    /// response's map (which then often needs no allocation at all):
    /// written after the upstream's lines, replacing theirs.
    pub(crate) request_id: Option<HeaderValue>,
}

impl RawHead {
    /// Reads the fields once: the framing ones and `Date` are noted as they
    /// go (names told apart by length first).
    pub(crate) fn new(head: Bytes, fields: &[FieldRanges]) -> Self {
        let mut kept = smallvec::SmallVec::with_capacity(fields.len());
        let (mut last_coding, mut lengths, mut has_date) = (None, 0, false);
        for (name, value) in fields {
            let raw = &head[name.clone()];
            match raw.len() {
                4 if raw.eq_ignore_ascii_case(b"date") => has_date = true,
                10 if is_connection_or_keep_alive(raw) => continue,
                // The gateway's own: an upstream's would pass for the
                // caller's balance on calls that carry none.
                16 if raw.eq_ignore_ascii_case(b"tollgate-balance") => continue,
                14 if raw.eq_ignore_ascii_case(b"content-length") => lengths += 1,
                17 if raw.eq_ignore_ascii_case(b"transfer-encoding") => {
                    last_coding = Some(kept.len());
                }
                _ => {}
            }
            // Heads are at most `MAX_HEAD_BYTES` long: offsets fit.
            kept.push([name.start, name.end, value.start, value.end].map(|at| at as u32));
        }
        Self {
            head,
            fields: kept,
            last_coding,
            lengths,
            has_date,
            request_id: None,
        }
    }

    fn value(&self, index: usize) -> &[u8] {
        let [_, _, start, end] = self.fields[index];
        &self.head[start as usize..end as usize]
    }

    /// Each field's name (as the upstream wrote it) and value.
    pub fn fields(&self) -> impl DoubleEndedIterator<Item = (&[u8], &[u8])> {
        self.fields.iter().map(|&[a, b, c, d]| {
            (
                &self.head[a as usize..b as usize],
                &self.head[c as usize..d as usize],
            )
        })
    }

    /// Whether its `Transfer-Encoding`, if any, is one `chunked` and no
    /// other coding ([`only_chunked`]).
    pub fn codings_are_chunked(&self) -> bool {
        self.last_coding.is_none()
            || only_chunked_values(
                self.fields()
                    .filter(|(name, _)| name.eq_ignore_ascii_case(b"transfer-encoding"))
                    .map(|(_, value)| value),
            )
    }

    /// Whether a field is named `name` (lowercase).
    pub fn contains(&self, name: &str) -> bool {
        self.fields()
            .any(|(field, _)| field.eq_ignore_ascii_case(name.as_bytes()))
    }

    pub fn has_content_length(&self) -> bool {
        self.lengths > 0
    }

    pub fn has_date(&self) -> bool {
        self.has_date
    }

    /// The fields as a header map, with room for `spare` more; hop-by-hop
    /// fields too when `hop_by_hop`, else only those that go on to the
    /// client. Names and values were checked as the head was parsed; a
    /// field the map would not take (none that `httparse` accepts) is left
    /// out.
    pub fn to_map(&self, spare: usize, hop_by_hop: bool) -> HeaderMap {
        let mut headers = HeaderMap::with_capacity(self.fields.len() + spare);
        for &[a, b, c, d] in &self.fields {
            let raw_name = &self.head[a as usize..b as usize];
            if !hop_by_hop && is_hop_by_hop_name(raw_name) {
                continue;
            }
            let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(raw_name),
                HeaderValue::from_maybe_shared(self.head.slice(c as usize..d as usize)),
            ) else {
                continue;
            };
            headers.append(name, value);
        }
        headers
    }

    /// Framing as the fields declare it ([`declared_framing`]).
    pub fn declared_framing(&self) -> Result<(Option<Framing>, bool), HeadError> {
        let lengths = self
            .fields()
            .filter(|(name, _)| name.eq_ignore_ascii_case(b"content-length"))
            .map(|(_, value)| value);
        framing_of(
            self.last_coding.map(|index| self.value(index)),
            self.lengths > 0,
            // Only read when there is no `Transfer-Encoding`; none to find
            // without a `Content-Length`.
            lengths.take(self.lengths),
        )
    }

    /// Appends `name: value\r\n` for each field that goes on to the
    /// client: not hop-by-hop, and not named in `replaced` (what the
    /// gateway set).
    pub fn put_lines(&self, out: &mut BytesMut, replaced: &HeaderMap) {
        for (name, value) in self.fields() {
            if is_hop_by_hop_name(name)
                || replaced
                    .keys()
                    .any(|own| own.as_str().as_bytes().eq_ignore_ascii_case(name))
                || (self.request_id.is_some() && name.eq_ignore_ascii_case(b"x-request-id"))
            {
                continue;
            }
            put_header(out, name, value);
        }
        if let Some(id) = &self.request_id {
            put_header(out, b"x-request-id", id.as_bytes());
        }
    }
}

/// The trailer section's lines (each ending in `\n`) as fields:
/// whitespace before a colon is removed and a folded line joins the one
/// before with a space (RFC 9112 §5.1, §5.2), a malformed line is left
/// out, and so are fields no trailer may carry on: hop-by-hop, framing,
/// routing, authentication and response controls (RFC 9110 §6.5.1), and
/// those the gateway sets itself, which an upstream may not forge after
/// the head.
pub(crate) fn trailer_fields(section: &[u8]) -> HeaderMap {
    let mut joined: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    let section = section.strip_suffix(b"\n").unwrap_or(section);
    for line in section.split(|&b| b == b'\n') {
        let text = line.strip_suffix(b"\r").unwrap_or(line);
        if matches!(text.first(), Some(b' ' | b'\t')) {
            if let Some((_, value)) = joined.last_mut() {
                value.push(b' ');
                value.extend_from_slice(text.trim_ascii());
            }
            continue;
        }
        let Some(colon) = text.iter().position(|&b| b == b':') else {
            continue;
        };
        joined.push((
            text[..colon].trim_ascii_end().to_vec(),
            text[colon + 1..].trim_ascii().to_vec(),
        ));
    }
    let mut trailers = HeaderMap::new();
    for (name, value) in joined {
        if !may_trail(&name) {
            continue;
        }
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&name),
            HeaderValue::from_bytes(&value),
        ) {
            trailers.append(name, value);
        }
    }
    trailers
}

/// Whether a field may come in a trailer and go on (see [`trailer_fields`]).
fn may_trail(name: &[u8]) -> bool {
    const NEVER: &[&[u8]] = &[
        b"content-length",
        b"content-type",
        b"content-encoding",
        b"content-range",
        b"host",
        b"authorization",
        b"www-authenticate",
        b"set-cookie",
        b"cache-control",
        b"expires",
        b"age",
        b"date",
        b"location",
        b"retry-after",
        b"vary",
        b"x-request-id",
        b"ratelimit",
        b"ratelimit-policy",
        b"deprecation",
        b"sunset",
    ];
    !(is_hop_by_hop_name(name)
        || NEVER.iter().any(|never| name.eq_ignore_ascii_case(never))
        || (name.len() > 9 && name[..9].eq_ignore_ascii_case(b"tollgate-")))
}

/// A hop-by-hop header's name (RFC 9110 §7.6.1), any case: `Connection`,
/// `Keep-Alive`, `TE`, `Trailer`, `Transfer-Encoding`, `Upgrade` and any
/// `Proxy-*` but `Proxy-Status`.
pub(crate) fn is_hop_by_hop_name(name: &[u8]) -> bool {
    match name.len() {
        2 => name.eq_ignore_ascii_case(b"te"),
        7 => name.eq_ignore_ascii_case(b"trailer") || name.eq_ignore_ascii_case(b"upgrade"),
        10 => is_connection_or_keep_alive(name),
        17 => name.eq_ignore_ascii_case(b"transfer-encoding"),
        // `Proxy-Status` (RFC 9209) is end to end: earlier proxies' reports.
        12 if name.eq_ignore_ascii_case(b"proxy-status") => false,
        _ => name.len() > 6 && name[..6].eq_ignore_ascii_case(b"proxy-"),
    }
}

/// What a head's `Connection` lines say, read off the raw fields while the
/// head is parsed (no header map lookups).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct ConnectionTokens {
    pub keep_alive: bool,
    pub close: bool,
    /// A token other than `keep-alive` and `close` (`upgrade`, or a header
    /// name the hop-by-hop removal must drop).
    pub others: bool,
}

impl ConnectionTokens {
    /// Reads one field: a `Connection` line adds its tokens.
    pub(crate) fn read(&mut self, name: &[u8], value: &[u8]) {
        if name.len() != 10 || !name.eq_ignore_ascii_case(b"connection") {
            return;
        }
        for token in value.split(|&b| b == b',') {
            let token = token.trim_ascii();
            if token.eq_ignore_ascii_case(b"keep-alive") {
                self.keep_alive = true;
            } else if token.eq_ignore_ascii_case(b"close") {
                self.close = true;
            } else if !token.is_empty() {
                self.others = true;
            }
        }
    }
}

/// `Connection` or `Keep-Alive` (both ten bytes), any case.
fn is_connection_or_keep_alive(name: &[u8]) -> bool {
    name.len() == 10
        && (name.eq_ignore_ascii_case(b"connection") || name.eq_ignore_ascii_case(b"keep-alive"))
}

/// Whether a `Host` value is `uri-host [":" port]` (RFC 9112 §3.2, RFC
/// 3986 §3.2.2): a name of unreserved characters, escapes and
/// sub-delimiters, or a bracketed IP literal; empty is allowed (a target
/// without an authority). No `/`, `?`, `#`, `@`, spaces or quotes, which
/// would let it pass for part of a URL an upstream builds from it.
pub(crate) fn valid_host(value: &[u8]) -> bool {
    let (host, port) = match value.strip_prefix(b"[") {
        Some(rest) => {
            let Some(end) = rest.iter().position(|&b| b == b']') else {
                return false;
            };
            let literal = &rest[..end];
            if literal.is_empty()
                || !literal
                    .iter()
                    .all(|&b| b.is_ascii_alphanumeric() || b":.".contains(&b))
            {
                return false;
            }
            (&[][..], &rest[end + 1..])
        }
        None => match value.iter().rposition(|&b| b == b':') {
            Some(colon) => (&value[..colon], &value[colon..]),
            None => (value, &[][..]),
        },
    };
    let port_ok = match port {
        [] => true,
        [b':', digits @ ..] => digits.len() <= 5 && digits.iter().all(u8::is_ascii_digit),
        _ => false,
    };
    port_ok
        && host
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"-._~%!$&'()*+,;=".contains(&b))
}

/// Why a head could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    #[error("malformed message head")]
    Malformed,
    #[error("message head too large")]
    TooLarge,
    #[error("conflicting or invalid body length")]
    BadLength,
}

/// Whether a comma-separated header (`Connection`, `Transfer-Encoding`)
/// contains `token`, case-insensitively.
pub fn has_token(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|value| {
        value
            .as_bytes()
            .split(|&b| b == b',')
            .any(|item| item.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    })
}

/// Makes the head's framing headers say exactly what `framing` is (RFC
/// 9112 §6.3): with a `Transfer-Encoding`, no `Content-Length` (a message
/// with both must not pass on both); a length given as a list (`3, 3`) or
/// on several lines, one number. Other heads are left alone, untouched.
pub fn normalise_framing(headers: &mut HeaderMap, framing: Framing) {
    if headers.contains_key(header::TRANSFER_ENCODING) {
        headers.remove(header::CONTENT_LENGTH);
        return;
    }
    if let Framing::Length(length) = framing {
        let mut values = headers.get_all(header::CONTENT_LENGTH).iter();
        let single =
            values.next().is_some_and(|v| !v.as_bytes().contains(&b',')) && values.next().is_none();
        if !single {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
        }
    }
}

/// Whether a request's `Transfer-Encoding` is exactly `chunked`, once:
/// another coding (`gzip, chunked`) or `chunked` twice is refused, as the
/// gateway would otherwise pass bytes on under a coding it dropped.
pub fn only_chunked(headers: &HeaderMap) -> bool {
    only_chunked_values(
        headers
            .get_all(header::TRANSFER_ENCODING)
            .iter()
            .map(HeaderValue::as_bytes),
    )
}

/// [`only_chunked`] over the `Transfer-Encoding` values.
fn only_chunked_values<'a>(values: impl Iterator<Item = &'a [u8]>) -> bool {
    // Empty list items are no codings (RFC 9110 §5.6.1: `chunked,`).
    let mut codings = values
        .flat_map(|value| value.split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|coding| !coding.is_empty());
    codings
        .next()
        .is_some_and(|coding| coding.eq_ignore_ascii_case(b"chunked"))
        && codings.next().is_none()
}

/// The body framing a head declares (RFC 9112 §6.3): `Transfer-Encoding`
/// ending in `chunked` wins; a `Transfer-Encoding` without it is read to
/// the end of the connection (responses) or refused (requests, by the
/// caller); several `Content-Length`s must agree. Also whether the
/// framing headers already say exactly that (`false`: see
/// [`normalise_framing`]), found on the way at no extra lookup.
pub fn declared_framing(headers: &HeaderMap) -> Result<(Option<Framing>, bool), HeadError> {
    let last_coding = headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .next_back()
        .map(HeaderValue::as_bytes);
    framing_of(
        last_coding,
        headers.contains_key(header::CONTENT_LENGTH),
        headers
            .get_all(header::CONTENT_LENGTH)
            .iter()
            .map(HeaderValue::as_bytes),
    )
}

/// [`declared_framing`] from the last `Transfer-Encoding` value, whether
/// there is a `Content-Length`, and each `Content-Length` value.
fn framing_of<'a>(
    last_coding: Option<&[u8]>,
    has_length: bool,
    lengths: impl Iterator<Item = &'a [u8]>,
) -> Result<(Option<Framing>, bool), HeadError> {
    if let Some(last) = last_coding {
        let chunked = last
            .rsplit(|&b| b == b',')
            .map(<[u8]>::trim_ascii)
            .find(|coding| !coding.is_empty())
            .is_some_and(|coding| coding.eq_ignore_ascii_case(b"chunked"));
        return Ok((
            Some(if chunked {
                Framing::CHUNKED
            } else {
                Framing::Eof
            }),
            !has_length,
        ));
    }
    let mut length = None;
    let mut items = 0;
    for value in lengths {
        for item in value.split(|&b| b == b',') {
            items += 1;
            let item = item.trim_ascii();
            if item.is_empty() || item.len() > 19 || !item.iter().all(u8::is_ascii_digit) {
                return Err(HeadError::BadLength);
            }
            let parsed: u64 = std::str::from_utf8(item)
                .ok()
                .and_then(|text| text.parse().ok())
                .ok_or(HeadError::BadLength)?;
            if length.is_some_and(|seen| seen != parsed) {
                return Err(HeadError::BadLength);
            }
            length = Some(parsed);
        }
    }
    Ok((length.map(Framing::Length), items <= 1))
}

thread_local! {
    static DATE: RefCell<(u64, HeaderValue)> = const { RefCell::new((0, HeaderValue::from_static(""))) };
}

/// `Date` for a response, formatted at most once a second per thread.
pub fn date() -> HeaderValue {
    let now = std::time::SystemTime::now();
    let second = now
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    DATE.with(|cell| {
        let mut cached = cell.borrow_mut();
        if cached.0 != second {
            let text = httpdate::fmt_http_date(now);
            cached.1 =
                HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static(""));
            cached.0 = second;
        }
        cached.1.clone()
    })
}

/// Reads into `buf` from a poll-style reader, growing it when full.
pub(crate) fn poll_read_more<R: tokio::io::AsyncRead + Unpin>(
    reader: &mut R,
    cx: &mut std::task::Context<'_>,
    buf: &mut BytesMut,
) -> std::task::Poll<std::io::Result<usize>> {
    if buf.capacity() - buf.len() < 1024 {
        buf.reserve(16 * 1024);
    }
    tokio_util::io::poll_read_buf(std::pin::Pin::new(reader), cx, buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A raw head from `fields`, as `name: value` lines.
    fn raw(lines: &[&str]) -> RawHead {
        let text: String = lines.iter().map(|line| format!("{line}\r\n")).collect();
        let head = Bytes::from(text);
        let mut fields = Vec::new();
        let mut at = 0;
        for line in lines {
            let colon = line.find(": ").unwrap();
            fields.push((at..at + colon, at + colon + 2..at + line.len()));
            at += line.len() + 2;
        }
        RawHead::new(head, &fields)
    }

    #[test]
    fn trailer_lines_pass_on_unless_no_trailer_may_carry_them() {
        let mut framing = Framing::CHUNKED;
        let mut buf = BytesMut::from(
            &b"1\r\na\r\n0\r\nX-Sum:  42 \r\nContent-Length: 9\r\nTrailer: x\r\nbad line\r\n\r\n"[..],
        );
        let mut lines = Vec::new();
        loop {
            match framing.step(&mut buf).unwrap() {
                Step::Trailer(line) => lines.extend_from_slice(&line),
                Step::End => break,
                Step::Data(_) => {}
                Step::More => panic!("all of it is there"),
            }
        }
        let trailers = trailer_fields(&lines);
        assert_eq!(trailers.len(), 1, "{trailers:?}");
        assert_eq!(trailers["x-sum"], "42");
        assert!(buf.is_empty());
        let lines = b"X-A : b\r\nX-Folded: one\r\n  two\r\nX-Request-Id: forged\r\n\
            Tollgate-App: forged\r\nSet-Cookie: a=b\r\ngrpc-status: 0\r\n";
        let trailers = trailer_fields(lines);
        assert_eq!(trailers.len(), 3, "{trailers:?}");
        assert_eq!(trailers["x-a"], "b");
        assert_eq!(trailers["x-folded"], "one two");
        assert_eq!(trailers["grpc-status"], "0");
        // A trailer section as large as a head may be is read whole.
        let long = format!("1\r\na\r\n0\r\nX-Long: {}\r\n\r\n", "v".repeat(60_000));
        let mut framing = Framing::CHUNKED;
        let (body, done) = drain(&mut framing, long.as_bytes()).unwrap();
        assert!(done && body == b"a");
    }

    #[test]
    fn raw_heads_say_their_framing_and_pass_on_their_own_lines() {
        let plain = raw(&["Server: x", "Content-Length: 12", "Connection: keep-alive"]);
        assert_eq!(
            plain.declared_framing(),
            Ok((Some(Framing::Length(12)), true))
        );
        assert!(plain.has_content_length() && !plain.has_date());
        let chunked = raw(&["Transfer-Encoding: gzip", "transfer-encoding: chunked"]);
        assert_eq!(
            chunked.declared_framing(),
            Ok((Some(Framing::CHUNKED), true))
        );
        let both = raw(&["Content-Length: 3", "Transfer-Encoding: chunked"]);
        assert_eq!(both.declared_framing(), Ok((Some(Framing::CHUNKED), false)));
        let listed = raw(&["Content-Length: 3", "content-length: 3"]);
        assert_eq!(
            listed.declared_framing(),
            Ok((Some(Framing::Length(3)), false))
        );
        let differing = raw(&["Content-Length: 3", "Content-Length: 4"]);
        assert_eq!(differing.declared_framing(), Err(HeadError::BadLength));
        let none = raw(&["Date: today"]);
        assert_eq!(none.declared_framing(), Ok((None, true)));
        assert!(none.has_date());

        let head = raw(&[
            "Server: x",
            "X-Request-Id: theirs",
            "Keep-Alive: timeout=5",
            "Proxy-Agent: p",
            "TE: trailers",
            "Trailer: X-Sum",
            "Upgrade: h2c",
            "Transfer-Encoding: chunked",
            "Set-Cookie: a=1",
            "Set-Cookie: b=2",
        ]);
        let mut own = HeaderMap::new();
        own.insert("x-request-id", HeaderValue::from_static("ours"));
        let mut out = BytesMut::new();
        head.put_lines(&mut out, &own);
        assert_eq!(
            &out[..],
            b"Server: x\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n"
        );
        // The gateway's request id kept with the raw head replaces theirs.
        let mut head = head;
        head.request_id = Some(HeaderValue::from_static("ours"));
        let mut out = BytesMut::new();
        head.put_lines(&mut out, &HeaderMap::new());
        assert_eq!(
            &out[..],
            b"Server: x\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\nx-request-id: ours\r\n"
        );
        let map = head.to_map(0, false);
        assert_eq!(map.len(), 4, "{map:?}");
        assert_eq!(map.get_all("set-cookie").iter().count(), 2);
        assert_eq!(head.to_map(0, true).len(), 9, "Keep-Alive is never kept");
        assert!(head.contains("set-cookie") && !head.contains("date"));
    }

    #[test]
    fn host_values_are_a_host_and_a_port() {
        for good in [
            "",
            "example.com",
            "example.com:8080",
            "127.0.0.1:80",
            "[::1]",
            "[::1]:8443",
            "xn--caf-dma.example",
            "under_score.local",
        ] {
            assert!(valid_host(good.as_bytes()), "{good}");
        }
        for bad in [
            "evil.com/x?y",
            "a b",
            "a\"b",
            "user@host",
            "host#frag",
            "host:port",
            "host:123456",
            "[::1",
            "[]",
            "host:80:80",
            "a<b",
        ] {
            assert!(!valid_host(bad.as_bytes()), "{bad}");
        }
    }

    #[test]
    fn framing_headers_are_made_to_say_one_thing() {
        let mut single = HeaderMap::new();
        single.insert(header::CONTENT_LENGTH, HeaderValue::from_static("3"));
        assert_eq!(
            declared_framing(&single),
            Ok((Some(Framing::Length(3)), true))
        );
        let mut listed = HeaderMap::new();
        listed.insert(header::CONTENT_LENGTH, HeaderValue::from_static("3, 3"));
        assert_eq!(
            declared_framing(&listed),
            Ok((Some(Framing::Length(3)), false))
        );
        normalise_framing(&mut listed, Framing::Length(3));
        assert_eq!(listed[header::CONTENT_LENGTH], "3");
        let mut both = HeaderMap::new();
        both.insert(header::CONTENT_LENGTH, HeaderValue::from_static("5"));
        both.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        assert_eq!(declared_framing(&both), Ok((Some(Framing::CHUNKED), false)));
        normalise_framing(&mut both, Framing::CHUNKED);
        assert!(!both.contains_key(header::CONTENT_LENGTH));
        let mut chunked_twice = HeaderMap::new();
        chunked_twice.append(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        assert!(only_chunked(&chunked_twice));
        chunked_twice.append(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        assert!(!only_chunked(&chunked_twice));
        let mut gzip = HeaderMap::new();
        gzip.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("gzip, chunked"),
        );
        assert!(!only_chunked(&gzip));
    }

    fn chunked() -> Framing {
        Framing::CHUNKED
    }

    fn drain(framing: &mut Framing, input: &[u8]) -> Result<(Vec<u8>, bool), FramingError> {
        let mut buf = BytesMut::from(input);
        let mut out = Vec::new();
        loop {
            match framing.step(&mut buf)? {
                Step::Data(data) => out.extend_from_slice(&data),
                Step::Trailer(_) => {}
                Step::More => return Ok((out, false)),
                Step::End => return Ok((out, true)),
            }
        }
    }

    #[test]
    fn chunked_bodies_decode_across_any_split() {
        let wire = b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-trailer: 1\r\n\r\nNEXT";
        let (whole, done) = drain(&mut chunked(), wire).unwrap();
        assert!(done);
        assert_eq!(whole, b"hello world");
        // Byte by byte: every state must wait for more rather than fail.
        let mut framing = Framing::CHUNKED;
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        let mut ended = false;
        for &byte in wire.iter() {
            buf.put_u8(byte);
            loop {
                match framing.step(&mut buf).unwrap() {
                    Step::Data(data) => out.extend_from_slice(&data),
                    Step::Trailer(_) => {}
                    Step::More => break,
                    Step::End => {
                        ended = true;
                        break;
                    }
                }
            }
            if ended {
                break;
            }
        }
        assert!(ended);
        assert_eq!(out, b"hello world");
    }

    #[test]
    fn bad_chunks_are_refused() {
        for wire in [
            &b"zz\r\n"[..],
            b"5\r\nhelloXX",
            b"\r\n",
            b"ffffffffffffffff1\r\n",
        ] {
            assert_eq!(
                drain(&mut chunked(), wire).unwrap_err(),
                FramingError::Chunked,
                "{wire:?}"
            );
        }
        let long = vec![b'1'; MAX_LINE_BYTES + 1];
        assert!(drain(&mut chunked(), &long).is_err());
    }

    #[test]
    fn lengths_stop_where_they_should() {
        let (body, done) = drain(&mut Framing::Length(5), b"helloGET /").unwrap();
        assert_eq!(body, b"hello");
        assert!(done);
        let mut framing = Framing::Length(5);
        let (body, done) = drain(&mut framing, b"hel").unwrap();
        assert_eq!((body.as_slice(), done), (&b"hel"[..], false));
        assert_eq!(framing.at_eof().unwrap_err(), FramingError::Truncated);
        assert!(matches!(Framing::Eof.at_eof(), Ok(Step::End)));
    }

    #[test]
    fn chunk_encoding_round_trips() {
        let mut out = BytesMut::new();
        put_chunk(&mut out, &[b'a'; 300]);
        put_chunk(&mut out, b"");
        out.put_slice(LAST_CHUNK);
        assert!(out.starts_with(b"12c\r\n"));
        let (body, done) = drain(&mut chunked(), &out).unwrap();
        assert_eq!(body.len(), 300);
        assert!(done);
    }

    #[test]
    fn declared_lengths() {
        let mut headers = HeaderMap::new();
        assert_eq!(declared_framing(&headers).map(|d| d.0), Ok(None));
        headers.append(header::CONTENT_LENGTH, HeaderValue::from_static("12"));
        assert_eq!(
            declared_framing(&headers).map(|d| d.0),
            Ok(Some(Framing::Length(12)))
        );
        headers.append(header::CONTENT_LENGTH, HeaderValue::from_static("12, 12"));
        assert_eq!(
            declared_framing(&headers).map(|d| d.0),
            Ok(Some(Framing::Length(12)))
        );
        headers.append(header::CONTENT_LENGTH, HeaderValue::from_static("13"));
        assert_eq!(
            declared_framing(&headers).map(|d| d.0),
            Err(HeadError::BadLength)
        );
        let mut headers = HeaderMap::new();
        headers.append(header::CONTENT_LENGTH, HeaderValue::from_static("-1"));
        assert_eq!(
            declared_framing(&headers).map(|d| d.0),
            Err(HeadError::BadLength)
        );
        headers.append(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("gzip, chunked"),
        );
        assert_eq!(
            declared_framing(&headers).map(|d| d.0),
            Ok(Some(Framing::CHUNKED))
        );
        let mut headers = HeaderMap::new();
        headers.append(header::TRANSFER_ENCODING, HeaderValue::from_static("gzip"));
        assert_eq!(
            declared_framing(&headers).map(|d| d.0),
            Ok(Some(Framing::Eof))
        );
    }

    #[test]
    fn numbers() {
        let mut out = BytesMut::new();
        put_decimal(&mut out, 0);
        out.put_u8(b' ');
        put_decimal(&mut out, 18_446_744_073_709_551_615);
        assert_eq!(&out[..], b"0 18446744073709551615");
    }
}
