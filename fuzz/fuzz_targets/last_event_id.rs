//! `Last-Event-ID` on a legacy session's `GET`: `palisade::resume::Logs::resume`, which parses
//! `<stream>_<seq>` and replays what that stream kept.
//!
//! Input: byte 0 shapes the session's streams (how many events each carried, which finished),
//! the rest is the header value.
//!
//! Checks:
//! - no panic (ids with huge numbers, signs, extra underscores, any bytes);
//! - an id that does not name a stream of this session is refused, never answered with
//!   another stream's events;
//! - what is replayed are this stream's events after the given seq, in order and consecutive,
//!   each decoding (with the SSE decoder) to an event whose id is `<stream>_<n>`;
//! - resuming from the priming event's id replays every event the stream kept.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mcp_wire::sse::Decoder;
use palisade::resume::{Logs, ResumeError};

fn event_ids(events: &[bytes::Bytes]) -> Vec<String> {
    let mut d = Decoder::new(1 << 20);
    let mut ids = Vec::new();
    for e in events {
        d.push(e);
        while let Some(ev) = d.next_event().expect("replayed event decodes") {
            ids.push(ev.id.expect("replayed event has an id"));
        }
    }
    ids
}

fuzz_target!(|data: &[u8]| {
    let Some((&shape, header)) = data.split_first() else {
        return;
    };
    let logs = Logs::default();
    let counts = [(shape & 7) as u64, ((shape >> 3) & 7) as u64];
    let mut streams = Vec::new();
    for (i, n) in counts.iter().enumerate() {
        let log = if i == 1 && shape & 0x80 != 0 {
            logs.open_standalone()
        } else {
            logs.open()
        };
        for k in 0..*n {
            logs.push(&log, format!("{{\"n\":{k}}}").as_bytes());
        }
        if shape & (0x40 >> i) != 0 {
            log.finish();
        }
        streams.push((log, *n));
    }

    // The priming id of every stream replays all it kept.
    for (log, n) in &streams {
        let priming = event_ids(&[log.priming()]);
        let (found, att) = logs.resume(&priming[0]).expect("priming id resumes");
        assert_eq!(found.stream, log.stream);
        assert_eq!(att.missed.len() as u64, *n);
    }

    let Ok(id) = std::str::from_utf8(header) else {
        return;
    };
    match logs.resume(id) {
        Ok((log, attached)) => {
            let (stream, seq) = id
                .split_once('_')
                .expect("a resumable id has an underscore");
            let stream: u64 = stream.parse().expect("stream number");
            let seq: u64 = seq.parse().expect("seq number");
            assert_eq!(log.stream, stream, "resumed another stream than {id:?}");
            let n = streams
                .iter()
                .find(|(l, _)| l.stream == stream)
                .expect("known stream")
                .1;
            assert!(seq <= n);
            let ids = event_ids(&attached.missed);
            let expected: Vec<String> = (seq + 1..=n).map(|k| format!("{stream}_{k}")).collect();
            assert_eq!(ids, expected, "replay after {id:?}");
        }
        Err(ResumeError::Malformed(s) | ResumeError::Unknown(s) | ResumeError::Gap(s)) => {
            assert_eq!(s, id);
        }
    }
});
