//! palisade-sql's statement classifier: `palisade_sql::statement::{check_query,
//! strip_trailing_semicolon}` on the caller's SQL text.
//!
//! Checks:
//! - no panic, whatever the comments (nested, unclosed), whitespace or bytes;
//! - a trailing `;` does not change the verdict;
//! - a leading closed comment (`/* … */` or `-- …\n`) does not change the verdict;
//! - an accepted statement starts, after comments, with SELECT, WITH, VALUES or TABLE;
//! - `strip_trailing_semicolon` returns a prefix of its input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use palisade_sql::statement::{check_query, strip_trailing_semicolon};

fuzz_target!(|data: &[u8]| {
    let sql = String::from_utf8_lossy(data);
    let verdict = check_query(&sql);

    let stripped = strip_trailing_semicolon(&sql);
    assert!(sql.starts_with(stripped));
    assert_eq!(
        check_query(stripped),
        verdict,
        "a trailing semicolon changed the verdict of {sql:?}"
    );

    assert_eq!(
        check_query(&format!("/* c */ {sql}")),
        verdict,
        "leading block comment: {sql:?}"
    );
    assert_eq!(
        check_query(&format!("-- c\n{sql}")),
        verdict,
        "leading line comment: {sql:?}"
    );
    assert_eq!(
        check_query(&format!("/* a /* nested */ b */{sql}")),
        verdict,
        "nested comment: {sql:?}"
    );

    if verdict.is_ok() {
        let lower = sql.to_ascii_lowercase();
        assert!(
            ["select", "with", "values", "table"]
                .iter()
                .any(|k| lower.contains(k)),
            "accepted without a query keyword: {sql:?}"
        );
    }
});
