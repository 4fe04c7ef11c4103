//! List cursors: `palisade::catalog::page`, which decodes the client's `cursor` and cuts one
//! page of a merged list.
//!
//! Input: two bytes pick the list length (0..=2600, so lists of one, two and three pages), the
//! rest is the cursor.
//!
//! Checks:
//! - no panic on any cursor (overflowing offsets, bad base64, non-UTF-8);
//! - an accepted cursor gives a contiguous run of the list, of at most one page, whose
//!   `nextCursor` (present exactly when items remain) continues right after it;
//! - following `nextCursor` from the first page visits every item once, in order.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use mcp_wire::RawObject;
use palisade::catalog::page;
use palisade::upstream::ListKind;
use serde_json::value::RawValue;

const MAX_ITEMS: usize = 2600;

fn items() -> &'static [Box<RawValue>] {
    static ITEMS: OnceLock<Vec<Box<RawValue>>> = OnceLock::new();
    ITEMS.get_or_init(|| {
        (0..MAX_ITEMS)
            .map(|i| RawValue::from_string(format!("{{\"i\":{i}}}")).expect("raw"))
            .collect()
    })
}

/// The item indices on a page, and its `nextCursor`.
fn read(page: &RawObject) -> (Vec<usize>, Option<String>) {
    let list: Vec<serde_json::Value> =
        serde_json::from_str(page.get("tools").expect("a page has its list").get()).expect("list");
    let idx = list
        .iter()
        .map(|v| v["i"].as_u64().expect("index") as usize)
        .collect();
    (idx, page.get_str("nextCursor"))
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let n = (u16::from_le_bytes([data[0], data[1]]) as usize) % (MAX_ITEMS + 1);
    let all = &items()[..n];
    let cursor = String::from_utf8_lossy(&data[2..]);

    if let Ok(p) = page(ListKind::Tools, all, Some(&cursor)) {
        let (idx, next) = read(&p);
        if let Some(&first) = idx.first() {
            assert!(
                idx.iter().enumerate().all(|(k, i)| *i == first + k),
                "not contiguous"
            );
        }
        let end = idx.last().map_or(n, |l| l + 1);
        assert!(idx.len() <= 1000);
        assert_eq!(next.is_some(), end < n, "nextCursor presence");
        if let Some(next) = next {
            let (after, _) = read(
                &page(ListKind::Tools, all, Some(&next))
                    .ok()
                    .expect("own cursor"),
            );
            assert_eq!(
                after.first(),
                Some(&end),
                "nextCursor does not continue the page"
            );
        }
    }

    // The walk from the first page, once per list length.
    if data.len() == 2 {
        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let p = page(ListKind::Tools, all, cursor.as_deref())
                .ok()
                .expect("walk");
            let (idx, next) = read(&p);
            seen.extend(idx);
            match next {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        assert_eq!(seen, (0..n).collect::<Vec<_>>());
    }
});
