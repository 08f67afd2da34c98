//! Incremental server-sent events parsing (the WHATWG event-stream grammar)
//! and the two ways this crate writes events.

/// One dispatched event: its `event:` name, if any, and its `data:` lines
/// joined by `\n`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    pub event: Option<String>,
    pub data: String,
}

/// The largest event (data plus the line being read) the parser holds, in
/// bytes. Gemini can stream a generated image inline in one event, hence the
/// generous bound; anything larger is dropped and counted in
/// [`SseParser::dropped`].
pub const MAX_EVENT_BYTES: usize = 32 << 20;

/// Parses an event stream fed in arbitrary pieces: a piece may end anywhere,
/// inside a UTF-8 sequence or between the `\r` and `\n` of a line end.
///
/// Lines end with CRLF, LF or a lone CR. `event:` sets the name, `data:` lines
/// are joined with `\n`, lines starting with `:` are comments, `id:` and
/// `retry:` are ignored, and a blank line dispatches the event (an event with
/// no data line is not dispatched). Invalid UTF-8 is replaced, not rejected.
#[derive(Debug)]
pub struct SseParser {
    /// Bytes of the line being read (without its line end).
    line: Vec<u8>,
    /// The previous piece ended with `\r`: a `\n` starting the next piece
    /// belongs to that line end.
    after_cr: bool,
    /// At the very start of the stream, where a BOM is skipped.
    at_start: bool,
    event: Option<String>,
    data: String,
    has_data: bool,
    /// Discarding the rest of an event that grew past [`MAX_EVENT_BYTES`].
    skipping: bool,
    /// The line being read is the one that overflowed (its end is not the
    /// blank line that ends the event).
    line_overflowed: bool,
    dropped: u64,
}

impl SseParser {
    pub fn new() -> Self {
        Self {
            line: Vec::new(),
            after_cr: false,
            at_start: true,
            event: None,
            data: String::new(),
            has_data: false,
            skipping: false,
            line_overflowed: false,
            dropped: 0,
        }
    }

    /// Parses `bytes`, appending every event they complete to `out`.
    pub fn push(&mut self, bytes: &[u8], out: &mut Vec<SseEvent>) {
        let mut rest = bytes;
        if self.after_cr {
            self.after_cr = false;
            if let Some((b'\n', tail)) = rest.split_first() {
                rest = tail;
            }
        }
        while !rest.is_empty() {
            match rest.iter().position(|&byte| byte == b'\n' || byte == b'\r') {
                Some(end) => {
                    self.extend_line(&rest[..end]);
                    let was_cr = rest[end] == b'\r';
                    rest = &rest[end + 1..];
                    if was_cr {
                        match rest.first() {
                            Some(b'\n') => rest = &rest[1..],
                            Some(_) => {}
                            None => self.after_cr = true,
                        }
                    }
                    self.end_line(out);
                }
                None => {
                    self.extend_line(rest);
                    rest = &[];
                }
            }
        }
    }

    /// The stream ended. A last event that lacks its closing blank line is
    /// still dispatched (lenient: some upstreams end `data: [DONE]` without one).
    pub fn finish(&mut self, out: &mut Vec<SseEvent>) {
        if !self.line.is_empty() {
            self.end_line(out);
        }
        self.dispatch(out);
        self.after_cr = false;
    }

    /// Events dropped for exceeding [`MAX_EVENT_BYTES`].
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    fn extend_line(&mut self, bytes: &[u8]) {
        if self.skipping {
            return;
        }
        if self.line.len() + self.data.len() + bytes.len() > MAX_EVENT_BYTES {
            self.skipping = true;
            self.line_overflowed = true;
            self.dropped += 1;
            self.line.clear();
            self.data.clear();
            self.has_data = false;
            self.event = None;
            return;
        }
        self.line.extend_from_slice(bytes);
    }

    fn end_line(&mut self, out: &mut Vec<SseEvent>) {
        if std::mem::take(&mut self.line_overflowed) {
            return;
        }
        let line = std::mem::take(&mut self.line);
        let mut line: &[u8] = &line;
        if self.at_start {
            self.at_start = false;
            if let Some(tail) = line.strip_prefix("\u{feff}".as_bytes()) {
                line = tail;
            }
        }
        if line.is_empty() {
            if self.skipping {
                self.skipping = false;
            } else {
                self.dispatch(out);
            }
            return;
        }
        if self.skipping || line.first() == Some(&b':') {
            return;
        }
        let (name, value) = match line.iter().position(|&byte| byte == b':') {
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &[][..]),
        };
        match name {
            b"event" => self.event = Some(String::from_utf8_lossy(value).into_owned()),
            b"data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(&String::from_utf8_lossy(value));
                self.has_data = true;
            }
            _ => {}
        }
    }

    fn dispatch(&mut self, out: &mut Vec<SseEvent>) {
        let event = self.event.take();
        if self.has_data {
            self.has_data = false;
            out.push(SseEvent {
                event,
                data: std::mem::take(&mut self.data),
            });
        }
    }
}

impl Default for SseParser {
    fn default() -> Self {
        Self::new()
    }
}

/// Appends `data: <data>\n\n`.
pub(crate) fn write_data(out: &mut Vec<u8>, data: &str) {
    out.extend_from_slice(b"data: ");
    write_lines(out, data);
}

/// Appends `event: <name>\ndata: <data>\n\n`.
pub(crate) fn write_event(out: &mut Vec<u8>, name: &str, data: &str) {
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\ndata: ");
    write_lines(out, data);
}

/// Writes `data` (a multi-line value is split over several `data:` lines,
/// which a reader joins back) and the blank line that ends the event.
fn write_lines(out: &mut Vec<u8>, data: &str) {
    let mut lines = data.split('\n');
    if let Some(first) = lines.next() {
        out.extend_from_slice(first.as_bytes());
    }
    for line in lines {
        out.extend_from_slice(b"\ndata: ");
        out.extend_from_slice(line.as_bytes());
    }
    out.extend_from_slice(b"\n\n");
}
