//! Templates of dedicated servers filled for one tenant each time its instance starts (their
//! syntax, `${tenant.id}` and `${secret:NAME}`, is checked with the config: `config::template`).
//!
//! Secret values are read from the gateway host at that moment (so a rotated file is picked up
//! by the next start) and exist only in the child's command line or environment: errors name
//! the secret, never its value. A stdio instance runs in its tenant's working directory unless
//! the template names another.

use std::collections::BTreeMap;
use std::path::PathBuf;

use palisade_ids::TenantId;

use crate::config::template::{Piece, parse};
use crate::config::{Http, SecretSource, Stdio};

/// What a template is filled with for one tenant.
#[derive(Clone, PartialEq, Eq)]
pub struct TenantContext {
    pub tenant: TenantId,
    pub secrets: BTreeMap<String, SecretSource>,
    /// `<data>/tenants/<tenant>/<server>`, created before the instance starts.
    pub(crate) workdir: PathBuf,
}

impl std::fmt::Debug for TenantContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantContext")
            .field("tenant", &self.tenant)
            .field("secrets", &self.secrets.keys().collect::<Vec<_>>())
            .field("workdir", &self.workdir)
            .finish()
    }
}

/// Secret values read from the registry store for one start, by name.
pub(crate) type StoreSecrets = BTreeMap<String, String>;

/// Fills a template for a tenant.
pub(crate) fn render(
    text: &str,
    ctx: &TenantContext,
    stored: &StoreSecrets,
) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    for piece in parse(text)? {
        match piece {
            Piece::Text(t) => out.push_str(t),
            Piece::TenantId => out.push_str(&ctx.tenant),
            Piece::Secret(name) => out.push_str(&secret(ctx, stored, name)?),
        }
    }
    Ok(out)
}

/// A secret's value: from the config's `[tenants.secrets]` if it names one, else from the
/// registry store.
fn secret(ctx: &TenantContext, stored: &StoreSecrets, name: &str) -> Result<String, String> {
    let Some(source) = ctx.secrets.get(name) else {
        return stored.get(name).cloned().ok_or_else(|| {
            format!(
                "tenant `{0}` has no secret `{name}`: add it under [tenants.secrets] or with the admin API (PUT /admin/v1/tenants/{0}/secrets/{name})",
                ctx.tenant
            )
        });
    };
    let value = match (&source.env, &source.file) {
        (Some(var), _) => std::env::var(var).map_err(|_| {
            format!(
                "secret `{name}` of tenant `{}`: environment variable {var} is not set",
                ctx.tenant
            )
        })?,
        (None, Some(path)) => std::fs::read_to_string(path).map_err(|e| {
            format!(
                "secret `{name}` of tenant `{}`: cannot read {}: {}",
                ctx.tenant,
                path.display(),
                e.kind()
            )
        })?,
        (None, None) => return Err(format!("secret `{name}` has no source")),
    };
    Ok(value
        .strip_suffix('\n')
        .map(|v| v.strip_suffix('\r').unwrap_or(v))
        .unwrap_or(&value)
        .to_owned())
}

/// A stdio template filled for a tenant; it runs in the tenant's working directory unless the
/// template names one.
pub(crate) fn stdio_for(
    cfg: &Stdio,
    ctx: &TenantContext,
    stored: &StoreSecrets,
) -> Result<Stdio, String> {
    let cwd = match &cfg.cwd {
        Some(c) => PathBuf::from(render(&c.to_string_lossy(), ctx, stored)?),
        None => ctx.workdir.clone(),
    };
    std::fs::create_dir_all(&cwd)
        .map_err(|e| format!("cannot create the working directory {}: {e}", cwd.display()))?;
    Ok(Stdio {
        command: render(&cfg.command, ctx, stored)?,
        args: cfg
            .args
            .iter()
            .map(|a| render(a, ctx, stored))
            .collect::<Result<_, _>>()?,
        env: cfg
            .env
            .iter()
            .map(|(k, v)| Ok((k.clone(), render(v, ctx, stored)?)))
            .collect::<Result<_, String>>()?,
        cwd: Some(cwd),
        max_line_bytes: cfg.max_line_bytes,
    })
}

/// An HTTP template filled for a tenant (a per-tenant URL, e.g. one pod per tenant).
pub(crate) fn http_for(
    cfg: &Http,
    ctx: &TenantContext,
    stored: &StoreSecrets,
) -> Result<Http, String> {
    Ok(Http {
        url: render(&cfg.url, ctx, stored)?,
        headers: cfg
            .headers
            .iter()
            .map(|(k, v)| Ok((k.clone(), render(v, ctx, stored)?)))
            .collect::<Result<_, String>>()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(dir: &std::path::Path) -> TenantContext {
        let mut secrets = BTreeMap::new();
        let file = dir.join("token");
        std::fs::write(&file, "s3cret\n").unwrap();
        secrets.insert(
            "token".into(),
            SecretSource {
                env: None,
                file: Some(file),
            },
        );
        secrets.insert(
            "missing_env".into(),
            SecretSource {
                env: Some("PALISADE_TEST_SURELY_UNSET_VAR".into()),
                file: None,
            },
        );
        TenantContext {
            tenant: TenantId::parse("acme").unwrap(),
            secrets,
            workdir: dir.join("tenants/acme/kit"),
        }
    }

    #[test]
    fn placeholders_are_filled() {
        let dir = tempfile::tempdir().unwrap();
        let c = ctx(dir.path());
        assert_eq!(
            render(
                "--tenant=${tenant.id} ${secret:token}!",
                &c,
                &StoreSecrets::new()
            )
            .unwrap(),
            "--tenant=acme s3cret!"
        );
        let stored: StoreSecrets = [("db".to_owned(), "from-store".to_owned())].into();
        assert_eq!(render("plain", &c, &stored).unwrap(), "plain");
        assert_eq!(render("${secret:db}", &c, &stored).unwrap(), "from-store");
    }

    #[test]
    fn errors_name_the_secret_not_its_value() {
        let dir = tempfile::tempdir().unwrap();
        let c = ctx(dir.path());
        let none = StoreSecrets::new();
        let e = render("${secret:nope}", &c, &none).unwrap_err();
        assert!(e.contains("nope") && e.contains("[tenants.secrets]"), "{e}");
        let e = render("${secret:missing_env}", &c, &none).unwrap_err();
        assert!(e.contains("PALISADE_TEST_SURELY_UNSET_VAR"), "{e}");
        assert!(!format!("{c:?}").contains("s3cret"));
    }

    #[test]
    fn stdio_runs_in_the_tenant_workdir() {
        let dir = tempfile::tempdir().unwrap();
        let c = ctx(dir.path());
        let cfg = Stdio {
            command: "/bin/server".into(),
            args: vec!["${tenant.id}".into()],
            env: [("TOKEN".to_owned(), "${secret:token}".to_owned())].into(),
            cwd: None,
            max_line_bytes: 1024,
        };
        let filled = stdio_for(&cfg, &c, &StoreSecrets::new()).unwrap();
        assert_eq!(filled.args, ["acme"]);
        assert_eq!(filled.env["TOKEN"], "s3cret");
        assert_eq!(filled.cwd.as_deref(), Some(c.workdir.as_path()));
        assert!(c.workdir.is_dir());
    }
}
