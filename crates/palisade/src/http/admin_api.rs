//! The admin API, `/admin/v1` on the admin listener: tenants, keys, policies and sessions.
//!
//! Every route but the OpenAPI document needs an admin credential: an admin API key
//! (`[admin] keys`) or an access token with the admin scope and no tenant from an issuer
//! configured with `admin = true`.
//! Tenant credentials are never admin credentials; [`gate`] checks them before any route runs.
//! Writes go to the registry store through [`Onboarding`], then this replica refreshes at once
//! (others within a second). Errors are `{"error": {"code", "message"}}`; `openapi.json`
//! describes it all.

// Handlers return the finished error `Response` as their `Err` (see `http::mcp`).
#![allow(clippy::result_large_err)]

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use subtle::ConstantTimeEq;

use crate::apikey::{key_id, parse_stored_hash};
use crate::audit::AdminChange;
use crate::auth::bearer;
use crate::config::Config;
use crate::gateway::Gateway;
use crate::onboarding::{CreateTenant, IssueKey, OnboardError, Onboarding, UpdateTenant};
use crate::policy::Policy;

pub(crate) fn routes(gw: Arc<Gateway>) -> Router<Arc<Gateway>> {
    Router::new()
        .route("/admin/v1/tenants", get(list_tenants).post(create_tenant))
        .route(
            "/admin/v1/tenants/{tenant}",
            get(get_tenant).patch(update_tenant).delete(delete_tenant),
        )
        .route("/admin/v1/tenants/{tenant}/suspend", post(suspend))
        .route("/admin/v1/tenants/{tenant}/resume", post(resume))
        .route(
            "/admin/v1/tenants/{tenant}/keys",
            get(list_keys).post(issue_key),
        )
        .route("/admin/v1/tenants/{tenant}/keys/{key}", delete(revoke_key))
        .route(
            "/admin/v1/tenants/{tenant}/policy",
            get(get_policy).put(put_policy),
        )
        .route("/admin/v1/tenants/{tenant}/sessions", get(list_sessions))
        .route(
            "/admin/v1/tenants/{tenant}/sessions/{session}",
            delete(revoke_session),
        )
        .route("/admin/v1/tenants/{tenant}/secrets", get(list_secrets))
        .route(
            "/admin/v1/tenants/{tenant}/secrets/{name}",
            axum::routing::put(put_secret).delete(delete_secret),
        )
        .route("/admin/v1/tenants/{tenant}/processes", get(list_processes))
        .route(
            "/admin/v1/tenants/{tenant}/processes/restart",
            post(restart_processes),
        )
        .route(
            "/admin/v1/tenants/{tenant}/processes/drain",
            post(drain_processes),
        )
        .route("/admin/v1/breakers", get(list_breakers))
        .route("/admin/v1/breakers/reset", post(reset_breaker))
        .route("/admin/v1/replicas", get(list_replicas))
        .route("/admin/v1/sessions", get(list_all_sessions))
        .layer(axum::middleware::from_fn_with_state(gw, gate))
        .route("/admin/v1/openapi.json", get(openapi))
}

/// Every admin route but the OpenAPI document: the credential is checked first, and after a
/// successful write the registry is refreshed, so the change is in force when the response is
/// sent.
///
/// Every write is audited: an ADMIN record (who, which route, which object; never a body,
/// so never a key or a secret's value) is durable before the change is made, or the change is
/// refused; an END record with the status follows.
async fn gate(
    State(gw): State<Arc<Gateway>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let principal = match admin(&gw, request.headers()).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let write = request.method() != axum::http::Method::GET;
    let audited = match (&gw.audit, write) {
        (Some(auditor), true) => {
            let change = admin_change(&request, principal);
            match auditor.admin_begin(&change).await {
                Ok(id) => Some((auditor.clone(), id, change, std::time::Instant::now())),
                Err(e) => {
                    gw.metrics.rejected("audit_unavailable");
                    tracing::error!(error = %e, "audit trail unavailable: admin change refused");
                    return error(
                        503,
                        "audit_unavailable",
                        "the audit trail cannot record this change right now, so it was not made; retry later",
                    );
                }
            }
        }
        _ => None,
    };
    let response = next.run(request).await;
    if let Some((auditor, id, change, started)) = audited {
        let outcome = if response.status().is_success() {
            "ok".to_owned()
        } else {
            format!("http {}", response.status().as_u16())
        };
        auditor
            .admin_end(id, &change, &outcome, started.elapsed().as_micros() as u64)
            .await;
    }
    if write
        && response.status().is_success()
        && let Err(e) = gw.refresh(true).await
    {
        tracing::warn!(error = %e, "registry refresh after an admin write failed; it will be retried");
    }
    response
}

/// The facts of an admin write: the tenant in the path, the HTTP method, and the object (the
/// path below `/admin/v1/`, which names keys by id and sessions by handle, never by secret).
fn admin_change(request: &axum::extract::Request, principal: String) -> AdminChange {
    let path = request.uri().path();
    let object = path.strip_prefix("/admin/v1/").unwrap_or(path);
    let tenant = object
        .strip_prefix("tenants/")
        .and_then(|rest| rest.split('/').next())
        .filter(|t| !t.is_empty())
        .unwrap_or("-");
    AdminChange {
        tenant: tenant.to_owned(),
        principal,
        method: format!("admin {}", request.method()),
        target: object.to_owned(),
    }
}

/// A finished admin response.
type Answer = Result<Response, Response>;

fn error(status: u16, code: &str, message: &str) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = json!({ "error": { "code": code, "message": message } }).to_string();
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn ok(status: StatusCode, body: Value) -> Answer {
    Ok((
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response())
}

fn failed(e: OnboardError) -> Response {
    let code = match &e {
        OnboardError::Invalid(_) => "invalid",
        OnboardError::NotFound(_) => "not_found",
        OnboardError::Conflict(_) => "conflict",
        OnboardError::Store(_) => "store_unavailable",
    };
    if let OnboardError::Store(inner) = &e {
        tracing::error!(error = %inner, "admin API: registry store failed");
    }
    error(e.status(), code, &e.to_string())
}

/// Checks the admin credential and names who it is (an admin key by its id, a token by
/// `<sub>@<issuer>`); the refusal is the finished response.
async fn admin(gw: &Gateway, headers: &HeaderMap) -> Result<String, Response> {
    let deny = |status: u16, msg: &str| {
        let mut r = error(status, "unauthorized", msg);
        if status == 401 {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(r#"Bearer realm="palisade-admin""#),
            );
        }
        r
    };
    let value = headers.get(header::AUTHORIZATION).ok_or_else(|| {
        deny(
            401,
            "the admin API needs `Authorization: Bearer <admin key or token>`",
        )
    })?;
    let credential = bearer(value.as_bytes()).map_err(|e| deny(401, &e.to_string()))?;
    let config = gw.config();
    let hash = gw.auth.pepper().hash(credential);
    let mut is_admin_key = false;
    for stored in config
        .admin
        .keys
        .iter()
        .filter_map(|k| parse_stored_hash(k))
    {
        is_admin_key |= bool::from(stored.0.ct_eq(&hash.0));
    }
    if is_admin_key {
        let id = std::str::from_utf8(credential).map_or_else(|_| "?".into(), key_id);
        return Ok(format!("admin key {id}"));
    }
    if let Some(verifier) = gw.auth.oauth()
        && !credential.starts_with(crate::apikey::KEY_PREFIX.as_bytes())
    {
        let token =
            std::str::from_utf8(credential).map_err(|_| deny(401, "invalid credentials"))?;
        // An admin token: from an issuer configured as an admin issuer, naming no tenant, with
        // the admin scope. A tenant's identity provider can therefore never mint one.
        return match verifier.verify(token).await {
            Ok(claims) if !claims.admin_issuer => Err(deny(
                403,
                "the token's issuer is not an admin issuer; admin tokens come only from issuers configured with admin = true",
            )),
            Ok(claims) if claims.tenant.is_some() => Err(deny(
                403,
                "the token names a tenant; an admin token must carry no tenant",
            )),
            Ok(claims) if claims.scopes.iter().any(|s| *s == config.admin.scope) => {
                Ok(format!("{}@{}", claims.subject, claims.issuer))
            }
            Ok(_) => Err(deny(
                403,
                &format!("the token lacks the admin scope `{}`", config.admin.scope),
            )),
            Err(e) if e.is_unavailable() => Err(deny(503, &e.to_string())),
            Err(e) => Err(deny(401, &format!("invalid access token: {e}"))),
        };
    }
    Err(deny(401, "invalid credentials: not an admin key"))
}

fn ops<'a>(gw: &'a Gateway, config: &'a Config) -> Onboarding<'a> {
    Onboarding {
        store: &gw.store,
        config,
        pepper: gw.auth.pepper(),
    }
}

fn parse<T: DeserializeOwned>(body: &Bytes) -> Result<T, Response> {
    let body: &[u8] = if body.is_empty() { b"{}" } else { body };
    serde_json::from_slice(body).map_err(|e| error(400, "invalid", &format!("request body: {e}")))
}

fn to_json<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        include_str!("admin_openapi.json"),
    )
        .into_response()
}

async fn list_tenants(State(gw): State<Arc<Gateway>>) -> Answer {
    let list = gw
        .store
        .list_tenants()
        .await
        .map_err(|e| failed(e.into()))?;
    ok(StatusCode::OK, json!({ "tenants": to_json(&list) }))
}

async fn create_tenant(State(gw): State<Arc<Gateway>>, body: Bytes) -> Answer {
    let req: CreateTenant = parse(&body)?;
    let config = gw.config();
    let t = ops(&gw, &config).create_tenant(req).await.map_err(failed)?;
    ok(StatusCode::CREATED, to_json(&t))
}

async fn get_tenant(State(gw): State<Arc<Gateway>>, Path(tenant): Path<String>) -> Answer {
    let config = gw.config();
    let t = ops(&gw, &config).tenant(&tenant).await.map_err(failed)?;
    ok(StatusCode::OK, to_json(&t))
}

async fn update_tenant(
    State(gw): State<Arc<Gateway>>,
    Path(tenant): Path<String>,
    body: Bytes,
) -> Answer {
    let req: UpdateTenant = parse(&body)?;
    let config = gw.config();
    let t = ops(&gw, &config)
        .update_tenant(&tenant, req)
        .await
        .map_err(failed)?;
    ok(StatusCode::OK, to_json(&t))
}

async fn delete_tenant(State(gw): State<Arc<Gateway>>, Path(tenant): Path<String>) -> Answer {
    let config = gw.config();
    ops(&gw, &config)
        .delete_tenant(&tenant)
        .await
        .map_err(failed)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct SuspendBody {
    reason: Option<String>,
}

async fn suspend(
    State(gw): State<Arc<Gateway>>,
    Path(tenant): Path<String>,
    body: Bytes,
) -> Answer {
    let req: SuspendBody = parse(&body)?;
    let config = gw.config();
    let t = ops(&gw, &config)
        .suspend(&tenant, req.reason.as_deref())
        .await
        .map_err(failed)?;
    ok(StatusCode::OK, to_json(&t))
}

async fn resume(State(gw): State<Arc<Gateway>>, Path(tenant): Path<String>) -> Answer {
    let config = gw.config();
    let t = ops(&gw, &config).resume(&tenant).await.map_err(failed)?;
    ok(StatusCode::OK, to_json(&t))
}

async fn list_keys(State(gw): State<Arc<Gateway>>, Path(tenant): Path<String>) -> Answer {
    let config = gw.config();
    ops(&gw, &config).tenant(&tenant).await.map_err(failed)?;
    let keys = gw
        .store
        .list_keys(&tenant)
        .await
        .map_err(|e| failed(e.into()))?;
    ok(StatusCode::OK, json!({ "keys": to_json(&keys) }))
}

async fn issue_key(
    State(gw): State<Arc<Gateway>>,
    Path(tenant): Path<String>,
    body: Bytes,
) -> Answer {
    let req: IssueKey = parse(&body)?;
    let config = gw.config();
    let issued = ops(&gw, &config)
        .issue_key(&tenant, req)
        .await
        .map_err(failed)?;
    let mut body = to_json(&issued.record);
    body["key"] = Value::String(issued.key);
    ok(StatusCode::CREATED, body)
}

async fn revoke_key(
    State(gw): State<Arc<Gateway>>,
    Path((tenant, key)): Path<(String, String)>,
) -> Answer {
    let record = gw
        .store
        .revoke_key(&tenant, &key)
        .await
        .map_err(|e| failed(e.into()))?;
    ok(StatusCode::OK, to_json(&record))
}

async fn get_policy(State(gw): State<Arc<Gateway>>, Path(tenant): Path<String>) -> Answer {
    let config = gw.config();
    let policy = ops(&gw, &config).policy(&tenant).await.map_err(failed)?;
    ok(StatusCode::OK, to_json(&policy))
}

async fn put_policy(
    State(gw): State<Arc<Gateway>>,
    Path(tenant): Path<String>,
    body: Bytes,
) -> Answer {
    let policy: Policy = parse(&body)?;
    let config = gw.config();
    ops(&gw, &config)
        .set_policy(&tenant, &policy)
        .await
        .map_err(failed)?;
    ok(StatusCode::OK, to_json(&policy))
}

async fn list_sessions(State(gw): State<Arc<Gateway>>, Path(tenant): Path<String>) -> Answer {
    let config = gw.config();
    ops(&gw, &config).tenant(&tenant).await.map_err(failed)?;
    let sessions = sessions_of(&gw, Some(&tenant)).await?;
    ok(StatusCode::OK, json!({ "sessions": sessions }))
}

/// Every tenant's sessions: the fleet's with a fleet key, else this replica's.
async fn list_all_sessions(State(gw): State<Arc<Gateway>>) -> Answer {
    let sessions = sessions_of(&gw, None).await?;
    ok(StatusCode::OK, json!({ "sessions": sessions }))
}

/// The sessions of one tenant or all, oldest first: with a fleet key, the fleet's (from its
/// store, leaving out those the registry no longer admits, which end as they are next used),
/// else this replica's.
async fn sessions_of(gw: &Gateway, tenant: Option<&str>) -> Result<Vec<Value>, Response> {
    let Some(sharing) = gw.sessions.sharing() else {
        return Ok(gw
            .sessions
            .list(tenant)
            .iter()
            .map(|s| {
                json!({
                    "handle": s.handle(),
                    "tenant": &*s.tenant,
                    "subject": &*s.subject,
                    "protocol_version": s.protocol_version,
                    "opened_at": s.opened_at,
                    "replica": gw.replica,
                })
            })
            .collect());
    };
    let records = sharing.store.list().await.map_err(|e| {
        gw.metrics.session_store_failed();
        error(
            503,
            "session_store_unavailable",
            &format!("{e}; retry shortly"),
        )
    })?;
    let registry = gw.registry();
    Ok(records
        .iter()
        .filter(|r| tenant.is_none_or(|t| r.tenant == t))
        .filter(|r| {
            registry
                .tenant(&r.tenant)
                .is_some_and(|t| t.status == palisade_store::Status::Active)
                && r.key.as_deref().is_none_or(|k| registry.key_is_live(k))
        })
        .map(|r| {
            json!({
                "handle": r.handle,
                "tenant": r.tenant,
                "subject": r.subject,
                "protocol_version": r.protocol_version,
                "opened_at": r.opened_at,
                "replica": r.replica,
            })
        })
        .collect())
}

/// Ends a session: with a fleet key, on every replica (within a second: each listens for it),
/// else on this one.
async fn revoke_session(
    State(gw): State<Arc<Gateway>>,
    Path((tenant, handle)): Path<(String, String)>,
) -> Answer {
    let listed = sessions_of(&gw, Some(&tenant)).await?;
    if !listed.iter().any(|s| s["handle"] == handle.as_str()) {
        return Err(error(
            404,
            "not_found",
            &format!("tenant `{tenant}` has no session `{handle}`"),
        ));
    }
    gw.sessions.end_handle(&handle).await.map_err(|e| {
        error(
            503,
            "session_store_unavailable",
            &format!("{e}; the session was not ended"),
        )
    })?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Which of a tenant's instances an operation concerns: all, or one server's.
#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct InstanceFilter {
    server: Option<String>,
}

/// The tenant's instances that `filter` selects; 404 when it names none.
async fn instances(
    gw: &Gateway,
    tenant: &str,
    filter: &InstanceFilter,
) -> Result<Vec<Arc<crate::upstream::Upstream>>, Response> {
    let config = gw.config();
    ops(gw, &config).tenant(tenant).await.map_err(failed)?;
    let list: Vec<_> = gw
        .instances_of(tenant)
        .into_iter()
        .filter(|u| filter.server.as_deref().is_none_or(|s| *u.name == *s))
        .collect();
    if let (Some(server), true) = (&filter.server, list.is_empty()) {
        return Err(error(
            404,
            "not_found",
            &format!("tenant `{tenant}` has no instance of server `{server}` (is it dedicated?)"),
        ));
    }
    Ok(list)
}

async fn list_processes(State(gw): State<Arc<Gateway>>, Path(tenant): Path<String>) -> Answer {
    let list = instances(&gw, &tenant, &InstanceFilter::default()).await?;
    let processes: Vec<Value> = list
        .iter()
        .flat_map(|u| u.instances())
        .map(|u| to_json(&u.status()))
        .collect();
    ok(StatusCode::OK, json!({ "processes": processes }))
}

async fn restart_processes(
    State(gw): State<Arc<Gateway>>,
    Path(tenant): Path<String>,
    body: Bytes,
) -> Answer {
    act_on_processes(&gw, &tenant, &body, "restarting", |u| u.restart()).await
}

async fn drain_processes(
    State(gw): State<Arc<Gateway>>,
    Path(tenant): Path<String>,
    body: Bytes,
) -> Answer {
    act_on_processes(&gw, &tenant, &body, "draining", |u| u.drain()).await
}

/// Applies an operator's action to the instances the body selects; 202 naming their servers.
async fn act_on_processes(
    gw: &Gateway,
    tenant: &str,
    body: &Bytes,
    verb: &str,
    action: impl Fn(&crate::upstream::Upstream),
) -> Answer {
    let filter: InstanceFilter = parse(body)?;
    let list = instances(gw, tenant, &filter).await?;
    for u in &list {
        action(u);
    }
    let servers: Vec<&str> = list.iter().map(|u| &*u.name).collect();
    ok(StatusCode::ACCEPTED, json!({ verb: servers }))
}

/// A secret's value, as the admin API takes it (and never gives it back).
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SecretValue {
    value: String,
}

async fn list_secrets(State(gw): State<Arc<Gateway>>, Path(tenant): Path<String>) -> Answer {
    let list = gw
        .store
        .list_secret_meta(&tenant)
        .await
        .map_err(|e| failed(e.into()))?;
    ok(StatusCode::OK, json!({ "secrets": to_json(&list) }))
}

async fn put_secret(
    State(gw): State<Arc<Gateway>>,
    Path((tenant, name)): Path<(String, String)>,
    body: Bytes,
) -> Answer {
    if !crate::config::template::valid_secret_name(&name) {
        return Err(error(
            400,
            "invalid",
            "secret names are 1-64 of [A-Za-z0-9_-]",
        ));
    }
    let req: SecretValue = parse(&body)?;
    gw.vault
        .put(&tenant, &name, &req.value)
        .await
        .map_err(|e| match e {
            crate::secrets::SecretError::Store(inner) => failed(inner.into()),
            other => error(409, "conflict", &other.to_string()),
        })?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn delete_secret(
    State(gw): State<Arc<Gateway>>,
    Path((tenant, name)): Path<(String, String)>,
) -> Answer {
    gw.store
        .delete_secret_meta(&tenant, &name)
        .await
        .map_err(|e| failed(e.into()))?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The replicas sharing this registry store, as their last heartbeats say: `alive` when one
/// was heard within the last few seconds, `this` for the replica that answers.
async fn list_replicas(State(gw): State<Arc<Gateway>>) -> Answer {
    let list = gw.store.replicas().await.map_err(|e| failed(e.into()))?;
    let now = crate::auth::now_ms();
    let replicas: Vec<Value> = list
        .iter()
        .map(|r| {
            let mut v = to_json(r);
            v["alive"] = json!(now - r.heartbeat_at <= crate::fleet::ALIVE_WITHIN_MS);
            v["this"] = json!(r.name == gw.replica);
            v
        })
        .collect();
    ok(StatusCode::OK, json!({ "replicas": replicas }))
}

/// The circuit breakers that are not closed, on the replica that answers.
async fn list_breakers(State(gw): State<Arc<Gateway>>) -> Answer {
    let breakers: Vec<Value> = gw
        .protection
        .breaker_states()
        .into_iter()
        .map(|(server, tenant, state)| json!({"server": server, "tenant": tenant, "state": state}))
        .collect();
    ok(StatusCode::OK, json!({ "breakers": breakers }))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct BreakerReset {
    server: String,
    /// The tenant's breaker on the server; absent: the server's own.
    tenant: Option<String>,
}

/// Closes a breaker now (an operator who knows the server is fixed).
async fn reset_breaker(State(gw): State<Arc<Gateway>>, body: Bytes) -> Answer {
    let r: BreakerReset = parse(&body)?;
    let was_open = gw.protection.reset_breaker(&r.server, r.tenant.as_deref());
    ok(StatusCode::OK, json!({ "reset": was_open }))
}
