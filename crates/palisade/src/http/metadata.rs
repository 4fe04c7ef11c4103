//! OAuth 2.0 Protected Resource Metadata (RFC 9728): how an MCP client that got a 401 finds
//! the authorization servers to ask for a token. Served at the root form and at the
//! path-suffixed form of the well-known URL; 404 when the gateway accepts no OAuth tokens.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::gateway::Gateway;

const WELL_KNOWN: &str = "/.well-known/oauth-protected-resource";

/// The metadata URL for a resource URI: the well-known path inserted between host and path
/// (RFC 9728 §3.1), e.g. `https://h/mcp` → `https://h/.well-known/oauth-protected-resource/mcp`.
pub(crate) fn metadata_url(resource: &str) -> String {
    let (scheme, rest) = resource.split_once("://").unwrap_or(("https", resource));
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let path = path.trim_end_matches('/');
    format!("{scheme}://{authority}{WELL_KNOWN}{path}")
}

pub(crate) async fn protected_resource(State(gw): State<Arc<Gateway>>) -> Response {
    let Some(oauth) = gw.auth.oauth() else {
        return (
            StatusCode::NOT_FOUND,
            "this gateway accepts API keys only: no [oauth] is configured\n",
        )
            .into_response();
    };
    let config = oauth.config();
    let doc = serde_json::json!({
        "resource": config.resource,
        "authorization_servers": config.issuers.iter().map(|i| &i.issuer).collect::<Vec<_>>(),
        "scopes_supported": config.scopes_supported,
        "bearer_methods_supported": ["header"],
        "resource_name": "Palisade MCP gateway",
    });
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        doc.to_string(),
    )
        .into_response()
}

/// The keys that verify the gateway's tenant assertions (see [`crate::assertion`]).
pub(crate) async fn jwks(State(gw): State<Arc<Gateway>>) -> Response {
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "max-age=60"),
        ],
        gw.assertions.jwks().to_string(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_url_inserts_the_well_known_path() {
        assert_eq!(
            metadata_url("https://mcp.example.com/mcp"),
            "https://mcp.example.com/.well-known/oauth-protected-resource/mcp"
        );
        assert_eq!(
            metadata_url("http://127.0.0.1:8080"),
            "http://127.0.0.1:8080/.well-known/oauth-protected-resource"
        );
        assert_eq!(
            metadata_url("https://h/a/b/"),
            "https://h/.well-known/oauth-protected-resource/a/b"
        );
    }
}
