//! The two eras of MCP and the names both put on the wire: protocol versions, HTTP headers,
//! `_meta` keys and MCP-specific error codes.
//!
//! Legacy (2025-11-25 and older) negotiates once with `initialize` and keeps a session; modern
//! (2026-07-28) is stateless and every request carries its version in `_meta` and in headers.

/// The newest protocol revision, stateless.
pub const MODERN: &str = "2026-07-28";
/// The newest revision with `initialize` and sessions.
pub const LATEST_LEGACY: &str = "2025-11-25";
/// Legacy revisions the gateway accepts from clients, newest first.
pub const LEGACY_VERSIONS: &[&str] = &["2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05"];
/// Every revision the gateway speaks, newest first.
pub const ALL_VERSIONS: &[&str] = &[
    "2026-07-28",
    "2025-11-25",
    "2025-06-18",
    "2025-03-26",
    "2024-11-05",
];

/// Header names (lowercase: `http::HeaderName` compares case-insensitively anyway).
pub mod header {
    pub const SESSION_ID: &str = "mcp-session-id";
    pub const PROTOCOL_VERSION: &str = "mcp-protocol-version";
    pub const METHOD: &str = "mcp-method";
    pub const NAME: &str = "mcp-name";
    pub const PARAM_PREFIX: &str = "mcp-param-";
    pub const LAST_EVENT_ID: &str = "last-event-id";
}

/// `_meta` keys the modern era reserves for per-request negotiation.
pub mod meta {
    pub const PROTOCOL_VERSION: &str = "io.modelcontextprotocol/protocolVersion";
    pub const CLIENT_CAPABILITIES: &str = "io.modelcontextprotocol/clientCapabilities";
    pub const CLIENT_INFO: &str = "io.modelcontextprotocol/clientInfo";
    pub const LOG_LEVEL: &str = "io.modelcontextprotocol/logLevel";
    pub const PROGRESS_TOKEN: &str = "progressToken";
    /// On the notifications of a `subscriptions/listen` stream: the id of that request.
    pub const SUBSCRIPTION_ID: &str = "io.modelcontextprotocol/subscriptionId";
    /// The prefix of every key the modern era reserves; the gateway owns these per hop.
    pub const RESERVED_PREFIX: &str = "io.modelcontextprotocol/";
}

/// Which era a message or a peer speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Era {
    Legacy,
    Modern,
}

impl Era {
    /// The era of a known protocol version, `None` for versions the gateway does not speak.
    pub fn of_version(version: &str) -> Option<Era> {
        if version == MODERN {
            Some(Era::Modern)
        } else if LEGACY_VERSIONS.contains(&version) {
            Some(Era::Legacy)
        } else {
            None
        }
    }
}

/// For `initialize`: the version to answer a legacy client that asked for `requested`.
/// The spec says: the requested one if supported, else our latest legacy revision.
pub fn negotiate_legacy(requested: &str) -> &'static str {
    LEGACY_VERSIONS
        .iter()
        .find(|v| **v == requested)
        .copied()
        .unwrap_or(LATEST_LEGACY)
}

/// The methods whose target the modern era repeats in the `Mcp-Name` header, and the params
/// field it must match.
pub fn name_field(method: &str) -> Option<&'static str> {
    match method {
        "tools/call" | "prompts/get" => Some("name"),
        "resources/read" => Some("uri"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eras_of_versions() {
        assert_eq!(Era::of_version("2026-07-28"), Some(Era::Modern));
        assert_eq!(Era::of_version("2025-06-18"), Some(Era::Legacy));
        assert_eq!(Era::of_version("1999-01-01"), None);
    }

    #[test]
    fn negotiation_falls_back_to_latest_legacy() {
        assert_eq!(negotiate_legacy("2025-06-18"), "2025-06-18");
        assert_eq!(negotiate_legacy("2030-01-01"), LATEST_LEGACY);
        assert_eq!(negotiate_legacy("2026-07-28"), LATEST_LEGACY);
    }
}
