//! HTTP/1.1 on a raw keep-alive connection: the request is written as
//! prebuilt bytes, the response head is parsed with `httparse` and its body
//! skipped by its framing (`Content-Length`, chunked, or to the close).
//!
//! A load generator must cost far less per request than what it measures.
//! hyper's client (a connection task, a dispatch channel, header maps) took
//! about 8 µs of user CPU per request here; this takes a fraction of that,
//! which leaves the cores to the proxies under test.

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::BoxError;
use crate::target::Target;

/// Largest response head accepted.
const MAX_HEAD: usize = 64 * 1024;
const MAX_HEADERS: usize = 64;

/// The bytes of the request every exchange sends.
pub fn request_bytes(target: &Target) -> Vec<u8> {
    let method = if target.body.is_some() { "POST" } else { "GET" };
    let mut out = format!(
        "{method} {} HTTP/1.1\r\nHost: {}\r\n",
        target.path, target.host_header
    );
    if let Some(value) = &target.authorization {
        out.push_str(&format!("Authorization: {value}\r\n"));
    }
    let mut bytes = match &target.body {
        Some(body) => {
            out.push_str(&format!(
                "Content-Type: {}\r\nContent-Length: {}\r\n\r\n",
                target.content_type,
                body.len()
            ));
            let mut bytes = out.into_bytes();
            bytes.extend_from_slice(body);
            bytes
        }
        None => {
            out.push_str("\r\n");
            out.into_bytes()
        }
    };
    bytes.shrink_to_fit();
    bytes
}

/// One keep-alive connection.
pub struct Conn {
    stream: TcpStream,
    buf: BytesMut,
    /// The server said it closes after this response.
    closing: bool,
}

impl Conn {
    pub async fn open(target: &Target) -> Result<Conn, BoxError> {
        let stream = TcpStream::connect(&target.addr).await?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            stream,
            buf: BytesMut::with_capacity(16 * 1024),
            closing: false,
        })
    }

    /// False once the server has announced or made a close.
    pub fn reusable(&self) -> bool {
        !self.closing
    }

    /// Sends `request` and reads the whole response; returns its status.
    pub async fn exchange(&mut self, request: &[u8]) -> Result<u16, BoxError> {
        self.stream.write_all(request).await?;
        let (status, mut framing) = loop {
            if let Some(head) = parse_head(&mut self.buf)? {
                break head;
            }
            if self.buf.len() >= MAX_HEAD {
                return Err("response head too large".into());
            }
            self.read_more().await?;
        };
        if framing.closes {
            self.closing = true;
        }
        loop {
            match framing.skip(&mut self.buf)? {
                Progress::Done => return Ok(status),
                Progress::More => {
                    if self.read_more().await? == 0 {
                        if framing.body == Body::Eof {
                            self.closing = true;
                            return Ok(status);
                        }
                        return Err("connection closed before the response ended".into());
                    }
                }
            }
        }
    }

    async fn read_more(&mut self) -> Result<usize, BoxError> {
        if self.buf.capacity() - self.buf.len() < 4096 {
            self.buf.reserve(16 * 1024);
        }
        let read = self.stream.read_buf(&mut self.buf).await?;
        if read == 0 && self.buf.is_empty() {
            self.closing = true;
        }
        Ok(read)
    }
}

/// How the rest of a response is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Body {
    Length(u64),
    /// Chunked: where the reader stands.
    Chunked(ChunkState),
    /// Until the server closes the connection.
    Eof,
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    Size,
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    /// Trailer lines after the last chunk, up to an empty line.
    Trailers,
}

#[derive(Debug, PartialEq, Eq)]
struct Framing {
    body: Body,
    closes: bool,
}

#[derive(Debug, PartialEq, Eq)]
enum Progress {
    Done,
    More,
}

/// Parses a response head at the start of `buf` and takes it off.
/// `None`: the head is not complete yet. 1xx heads are skipped.
fn parse_head(buf: &mut BytesMut) -> Result<Option<(u16, Framing)>, BoxError> {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut headers);
        let httparse::Status::Complete(length) = response.parse(buf)? else {
            return Ok(None);
        };
        let status = response.code.unwrap_or(0);
        let mut content_length = None;
        let mut chunked = false;
        let mut closes = response.version == Some(0);
        for header in response.headers.iter() {
            if header.name.eq_ignore_ascii_case("content-length") {
                let text = std::str::from_utf8(header.value)?;
                content_length = Some(text.trim().parse::<u64>()?);
            } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = has_token(header.value, b"chunked");
            } else if header.name.eq_ignore_ascii_case("connection") {
                if has_token(header.value, b"close") {
                    closes = true;
                } else if has_token(header.value, b"keep-alive") {
                    closes = false;
                }
            }
        }
        buf.advance(length);
        if (100..200).contains(&status) {
            continue;
        }
        let body = if status == 204 || status == 304 {
            Body::Done
        } else if chunked {
            Body::Chunked(ChunkState::Size)
        } else {
            match content_length {
                Some(0) => Body::Done,
                Some(n) => Body::Length(n),
                None => {
                    closes = true;
                    Body::Eof
                }
            }
        };
        return Ok(Some((status, Framing { body, closes })));
    }
}

fn has_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .any(|part| part.trim_ascii().eq_ignore_ascii_case(token))
}

impl Framing {
    /// Drops from `buf` what it holds of the body.
    fn skip(&mut self, buf: &mut BytesMut) -> Result<Progress, BoxError> {
        loop {
            match &mut self.body {
                Body::Done => return Ok(Progress::Done),
                Body::Eof => {
                    buf.clear();
                    return Ok(Progress::More);
                }
                Body::Length(left) => {
                    let take = (*left).min(buf.len() as u64);
                    buf.advance(take as usize);
                    *left -= take;
                    if *left == 0 {
                        self.body = Body::Done;
                    } else {
                        return Ok(Progress::More);
                    }
                }
                Body::Chunked(state) => {
                    let Some(next) = step_chunk(*state, buf)? else {
                        return Ok(Progress::More);
                    };
                    self.body = next;
                }
            }
        }
    }
}

/// One step of a chunked body; `None` when `buf` holds too little.
fn step_chunk(state: ChunkState, buf: &mut BytesMut) -> Result<Option<Body>, BoxError> {
    Ok(Some(match state {
        ChunkState::Size => {
            let Some(line) = take_line(buf)? else {
                return Ok(None);
            };
            let digits = line.split(|&b| b == b';').next().unwrap_or_default();
            let text = std::str::from_utf8(digits)?.trim();
            let size = u64::from_str_radix(text, 16)
                .map_err(|_| format!("bad chunk size line {text:?}"))?;
            if size == 0 {
                Body::Chunked(ChunkState::Trailers)
            } else {
                Body::Chunked(ChunkState::Data(size))
            }
        }
        ChunkState::Data(left) => {
            if buf.is_empty() {
                return Ok(None);
            }
            let take = left.min(buf.len() as u64);
            buf.advance(take as usize);
            if take == left {
                Body::Chunked(ChunkState::DataEnd)
            } else {
                Body::Chunked(ChunkState::Data(left - take))
            }
        }
        ChunkState::DataEnd => {
            let Some(line) = take_line(buf)? else {
                return Ok(None);
            };
            if !line.is_empty() {
                return Err("chunk data not followed by CRLF".into());
            }
            Body::Chunked(ChunkState::Size)
        }
        ChunkState::Trailers => {
            let Some(line) = take_line(buf)? else {
                return Ok(None);
            };
            if line.is_empty() {
                Body::Done
            } else {
                Body::Chunked(ChunkState::Trailers)
            }
        }
    }))
}

/// Takes one CRLF-terminated line off `buf` (without the CRLF).
fn take_line(buf: &mut BytesMut) -> Result<Option<Vec<u8>>, BoxError> {
    let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
        if buf.len() > 4096 {
            return Err("chunk line too long".into());
        }
        return Ok(None);
    };
    let line = buf[..end].to_vec();
    buf.advance(end + 2);
    Ok(Some(line))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `wire` one byte at a time (the worst split) and returns the
    /// status and whether the whole response was consumed exactly.
    fn read_split(wire: &[u8]) -> (u16, bool, BytesMut) {
        let mut buf = BytesMut::new();
        let mut fed = 0;
        let (status, mut framing) = loop {
            if let Some(head) = parse_head(&mut buf).expect("head parses") {
                break head;
            }
            buf.extend_from_slice(&wire[fed..fed + 1]);
            fed += 1;
        };
        loop {
            match framing.skip(&mut buf).expect("body parses") {
                Progress::Done => break,
                Progress::More => {
                    assert!(fed < wire.len(), "ran out of input before the end");
                    buf.extend_from_slice(&wire[fed..fed + 1]);
                    fed += 1;
                }
            }
        }
        (status, framing.closes, {
            let mut rest = buf;
            rest.extend_from_slice(&wire[fed..]);
            rest
        })
    }

    #[test]
    fn content_length_bodies_end_where_they_say() {
        let wire = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloHTTP/1.1";
        let (status, closes, rest) = read_split(wire);
        assert_eq!(status, 200);
        assert!(!closes);
        assert_eq!(&rest[..], b"HTTP/1.1", "the next response's bytes stay");
    }

    #[test]
    fn chunked_bodies_with_extensions_and_trailers_are_skipped() {
        let wire = b"HTTP/1.1 201 Created\r\nTransfer-Encoding: gzip, chunked\r\n\r\n\
            4;ext=1\r\ndata\r\n1A\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nX-Trailer: 1\r\n\r\nNEXT";
        let (status, _, rest) = read_split(wire);
        assert_eq!(status, 201);
        assert_eq!(&rest[..], b"NEXT");
    }

    #[test]
    fn interim_heads_are_skipped_and_close_is_noticed() {
        let wire = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 402 Payment Required\r\n\
            Connection: close\r\nContent-Length: 2\r\n\r\n{}";
        let (status, closes, rest) = read_split(wire);
        assert_eq!(status, 402);
        assert!(closes);
        assert!(rest.is_empty());
    }

    #[test]
    fn no_body_statuses_and_http10_framing() {
        let (status, closes, rest) = read_split(b"HTTP/1.1 204 No Content\r\n\r\nX");
        assert_eq!((status, closes, &rest[..]), (204, false, &b"X"[..]));
        let mut buf = BytesMut::from(&b"HTTP/1.0 200 OK\r\n\r\nuntil close"[..]);
        let (status, framing) = parse_head(&mut buf).expect("parses").expect("complete");
        assert_eq!(status, 200);
        assert_eq!(framing.body, Body::Eof);
        assert!(framing.closes);
    }

    #[test]
    fn malformed_chunks_are_errors() {
        let mut buf =
            BytesMut::from(&b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"[..]);
        let (_, mut framing) = parse_head(&mut buf).expect("parses").expect("complete");
        assert!(framing.skip(&mut buf).is_err());
    }

    #[test]
    fn requests_carry_the_target_headers_and_body() {
        let uri: http::Uri = "http://127.0.0.1:9/v1/chat?x=1".parse().expect("uri");
        let mut target = Target::from_uri(&uri).expect("target");
        target.authorization = Some("Bearer k".into());
        target.body = Some(bytes::Bytes::from_static(b"{\"a\":1}"));
        target.content_type = "application/json".into();
        let text = String::from_utf8(request_bytes(&target)).expect("utf8");
        assert_eq!(
            text,
            "POST /v1/chat?x=1 HTTP/1.1\r\nHost: 127.0.0.1:9\r\nAuthorization: Bearer k\r\n\
             Content-Type: application/json\r\nContent-Length: 7\r\n\r\n{\"a\":1}"
        );
    }
}
