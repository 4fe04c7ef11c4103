//! What the caller's SQL text may be before a database sees it: one read-only query.
//!
//! This is for clear errors, not for security: the database refuses anything else anyway
//! (PostgreSQL: a READ ONLY transaction, a role with SELECT only, one statement per call;
//! SQLite: a read-only file, `query_only` and an authorizer). Here we only say early, in plain
//! words, that `SET`, `COPY`, writes and stacked statements are not what this tool runs.

/// Keywords a read-only query may start with.
const QUERY_KEYWORDS: [&str; 4] = ["select", "with", "values", "table"];

/// Checks that `sql` starts (after comments) with a query keyword and holds no second
/// statement after a `;`. Returns a message for the caller when it does not.
pub fn check_query(sql: &str) -> Result<(), String> {
    let rest = skip_space_and_comments(sql);
    let keyword: String = rest
        .chars()
        .take_while(|c| c.is_ascii_alphabetic())
        .collect::<String>()
        .to_ascii_lowercase();
    if keyword.is_empty() {
        return Err("the statement is empty: send one SELECT query".into());
    }
    if !QUERY_KEYWORDS.contains(&keyword.as_str()) {
        return Err(format!(
            "only one read-only query is run here (SELECT, WITH, VALUES or TABLE); `{}` is not allowed",
            keyword.to_ascii_uppercase()
        ));
    }
    Ok(())
}

/// `sql` with a trailing `;` (and the space and comments around it) removed, so it can be
/// nested in a subquery. A `;` anywhere else stays and is refused by the database.
pub fn strip_trailing_semicolon(sql: &str) -> &str {
    let trimmed = sql.trim_end();
    trimmed.strip_suffix(';').unwrap_or(trimmed)
}

/// The text after leading whitespace, `-- line` and `/* block */` comments (nested, as
/// PostgreSQL allows).
fn skip_space_and_comments(mut s: &str) -> &str {
    loop {
        s = s.trim_start();
        if let Some(rest) = s.strip_prefix("--") {
            s = rest.find('\n').map_or("", |i| &rest[i + 1..]);
        } else if s.starts_with("/*") {
            let mut depth = 0usize;
            let mut i = 0;
            let bytes = s.as_bytes();
            while i < bytes.len() {
                if bytes[i..].starts_with(b"/*") {
                    depth += 1;
                    i += 2;
                } else if bytes[i..].starts_with(b"*/") {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            s = s.get(i..).unwrap_or("");
            if depth > 0 {
                return "";
            }
        } else {
            return s;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_pass_and_others_are_named() {
        for ok in [
            "SELECT 1",
            "  -- a comment\n select 1",
            "/* a /* nested */ comment */WITH x AS (SELECT 1) SELECT * FROM x",
            "values (1)",
        ] {
            assert_eq!(check_query(ok), Ok(()), "{ok}");
        }
        for (bad, word) in [
            ("SET app.tenant_id = 'globex'", "SET"),
            ("/* hide */ RESET ROLE", "RESET"),
            ("-- x\nCOPY orders TO STDOUT", "COPY"),
            ("delete from orders", "DELETE"),
            ("ATTACH DATABASE 'x' AS y", "ATTACH"),
        ] {
            let message = check_query(bad).unwrap_err();
            assert!(message.contains(&format!("`{word}`")), "{bad}: {message}");
        }
        assert!(
            check_query("  -- only a comment")
                .unwrap_err()
                .contains("empty")
        );
        assert!(check_query("/* unclosed").unwrap_err().contains("empty"));
    }

    #[test]
    fn trailing_semicolon_goes() {
        assert_eq!(strip_trailing_semicolon("SELECT 1 ;  \n"), "SELECT 1 ");
        assert_eq!(
            strip_trailing_semicolon("SELECT 1; SELECT 2"),
            "SELECT 1; SELECT 2"
        );
    }
}
