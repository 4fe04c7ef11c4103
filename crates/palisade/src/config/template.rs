//! The syntax of a dedicated server's templates: `${tenant.id}` and `${secret:NAME}` in its
//! command, args, env values, cwd, URL and header values. The config check refuses a template
//! this cannot parse; `upstream::template` fills them in for a tenant.

use super::Server;

/// A piece of a template.
pub enum Piece<'a> {
    Text(&'a str),
    TenantId,
    Secret(&'a str),
}

/// Splits a template into text and placeholders.
pub fn parse(text: &str) -> Result<Vec<Piece<'_>>, String> {
    let mut pieces = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        pieces.push(Piece::Text(&rest[..start]));
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("`${{` without a closing `}}` in `{text}`"))?;
        let name = &after[..end];
        pieces.push(match name {
            "tenant.id" => Piece::TenantId,
            _ => match name.strip_prefix("secret:") {
                Some(secret) if valid_secret_name(secret) => Piece::Secret(secret),
                _ => {
                    return Err(format!(
                        "unknown placeholder `${{{name}}}`: use ${{tenant.id}} or ${{secret:NAME}}"
                    ));
                }
            },
        });
        rest = &after[end + 1..];
    }
    pieces.push(Piece::Text(rest));
    Ok(pieces)
}

/// Checks a template; `true` if it has placeholders.
pub fn check(text: &str) -> Result<bool, String> {
    Ok(parse(text)?.iter().any(|p| !matches!(p, Piece::Text(_))))
}

pub(crate) fn valid_secret_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Every templated field of a server, with its config key (for errors).
pub fn fields(s: &Server) -> impl Iterator<Item = (String, &str)> {
    let mut out: Vec<(String, &str)> = Vec::new();
    if let Some(stdio) = &s.stdio {
        out.push(("stdio.command".into(), &stdio.command));
        for (i, a) in stdio.args.iter().enumerate() {
            out.push((format!("stdio.args[{i}]"), a));
        }
        for (k, v) in &stdio.env {
            out.push((format!("stdio.env.{k}"), v));
        }
        if let Some(cwd) = stdio.cwd.as_ref().and_then(|c| c.to_str()) {
            out.push(("stdio.cwd".into(), cwd));
        }
    }
    if let Some(http) = &s.http {
        out.push(("http.url".into(), &http.url));
        for (k, v) in &http.headers {
            out.push((format!("http.headers.{k}"), v));
        }
    }
    out.into_iter()
}

/// The names of the secrets a server's template uses.
pub(crate) fn secret_names(s: &Server) -> Vec<String> {
    let mut names: Vec<String> = fields(s)
        .filter_map(|(_, text)| parse(text).ok())
        .flatten()
        .filter_map(|p| match p {
            Piece::Secret(name) => Some(name.to_owned()),
            _ => None,
        })
        .collect();
    names.sort();
    names.dedup();
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_checked() {
        assert!(
            check("${tenant.name}")
                .unwrap_err()
                .contains("unknown placeholder")
        );
        assert!(check("${tenant.id").unwrap_err().contains("closing"));
        assert!(check("${secret:bad name}").is_err());
        assert!(!check("no placeholders").unwrap());
        assert!(check("--tenant=${tenant.id} ${secret:token}").unwrap());
    }
}
