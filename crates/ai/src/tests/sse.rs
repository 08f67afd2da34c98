use super::splits;
use crate::{MAX_EVENT_BYTES, SseEvent, SseParser};

fn parse_all(pieces: &[&[u8]]) -> Vec<SseEvent> {
    let mut parser = SseParser::new();
    let mut events = Vec::new();
    for piece in pieces {
        parser.push(piece, &mut events);
    }
    parser.finish(&mut events);
    events
}

fn event(name: Option<&str>, data: &str) -> SseEvent {
    SseEvent {
        event: name.map(str::to_owned),
        data: data.to_owned(),
    }
}

#[test]
fn grammar() {
    let stream = concat!(
        "\u{feff}: a comment first\n",
        "event: message_start\n",
        "data: {\"a\":1}\n",
        "\n",
        "data: line one\r\n",
        "data:line two\r\n",
        "data:  two spaces keep one\r\n",
        "id: 7\r\n",
        "retry: 1000\r\n",
        "\r\n",
        "event: only a name\n",
        "\n",
        "data\n",
        "\n",
        "event: ping\rdata: {\"type\": \"ping\"}\r\r",
        "data: ünïcødé ✓ 日本\n\n",
        "data: [DONE]",
    );
    let expected = vec![
        event(Some("message_start"), "{\"a\":1}"),
        event(None, "line one\nline two\n two spaces keep one"),
        // An event with only a name is not dispatched; a bare `data` line is empty data.
        event(None, ""),
        event(Some("ping"), "{\"type\": \"ping\"}"),
        event(None, "ünïcødé ✓ 日本"),
        // The last event lacks its blank line; finish() still dispatches it.
        event(None, "[DONE]"),
    ];
    for pieces in splits(stream.as_bytes()) {
        assert_eq!(parse_all(&pieces), expected);
    }
}

#[test]
fn every_single_split_point() {
    let stream = "event: a\r\ndata: x\r\n\r\ndata: é\rdata: z\r\r".as_bytes();
    let expected = vec![event(Some("a"), "x"), event(None, "é\nz")];
    for cut in 0..=stream.len() {
        let (head, tail) = stream.split_at(cut);
        assert_eq!(parse_all(&[head, tail]), expected, "cut at {cut}");
    }
}

#[test]
fn cr_lf_split_across_pushes_is_one_line_end() {
    let mut parser = SseParser::new();
    let mut events = Vec::new();
    parser.push(b"data: a\r", &mut events);
    parser.push(b"\n", &mut events);
    assert!(events.is_empty());
    parser.push(b"\r", &mut events);
    assert_eq!(events, vec![event(None, "a")]);
    parser.push(b"\ndata: b\n\n", &mut events);
    assert_eq!(events, vec![event(None, "a"), event(None, "b")]);
}

#[test]
fn invalid_utf8_is_replaced_not_fatal() {
    let events = parse_all(&[b"data: \xff\xfeok\n\n"]);
    assert_eq!(events, vec![event(None, "\u{fffd}\u{fffd}ok")]);
}

#[test]
fn oversized_event_is_dropped_and_counted() {
    let mut parser = SseParser::new();
    let mut events = Vec::new();
    parser.push(b"data: ", &mut events);
    let chunk = vec![b'x'; 1 << 20];
    for _ in 0..(MAX_EVENT_BYTES >> 20) + 1 {
        parser.push(&chunk, &mut events);
    }
    parser.push(b"\ndata: still skipped\n\ndata: next\n\n", &mut events);
    assert_eq!(events, vec![event(None, "next")]);
    assert_eq!(parser.dropped(), 1);
}
