//! The MCP face of palisade-sql: three tools, and the one rule that matters — which tenant a
//! call runs as.
//!
//! - Dedicated placement (one process per tenant): the tenant is the process's `TENANT_ID`.
//! - Shared placement (one process for all tenants): the tenant is the `tenant` claim of the
//!   gateway's assertion, in `_meta["io.palisade/tenant"]` (stdio and HTTP) or in
//!   `Authorization: Bearer` (HTTP), verified on every call. A call without a valid one is
//!   refused before any database work. Arguments never name a tenant.

use std::sync::Arc;

use rmcp::{
    ErrorData as McpError, RoleServer, ServerHandler,
    model::{
        CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, JsonObject,
        ListToolsResult, PaginatedRequestParams, ProtocolVersion, ServerConfig, Tool,
    },
    service::RequestContext,
};
use serde_json::{Value, json};

use crate::TenantId;
use crate::assertion::{self, Refused, Verifier};
use crate::backend::{Backend, Limits, Param, Query, SqlError};

/// How this process learns the tenant of a call.
pub enum Tenancy {
    /// One tenant for the life of the process.
    Dedicated(TenantId),
    /// The gateway's signed assertion on each call.
    Shared(Verifier),
}

/// The handler; cheap to clone (rmcp makes one per session).
#[derive(Clone)]
pub struct SqlServer {
    backend: Arc<Backend>,
    tenancy: Arc<Tenancy>,
    limits: Limits,
    tools: Arc<Vec<Tool>>,
}

fn tool_definitions() -> Vec<Tool> {
    let definitions = [
        json!({
            "name": "query_database",
            "title": "Query the database",
            "description": "Runs one read-only SQL query (SELECT, WITH, VALUES or TABLE) on your tenant's data and returns the rows. Use $1, $2… (PostgreSQL) or ?1, ?2… (SQLite) with `params` for values.",
            "inputSchema": {
                "type": "object",
                "properties": {
                    "sql": { "type": "string", "description": "One read-only query." },
                    "params": {
                        "type": "array",
                        "description": "Values for the query's parameters, in order: strings, numbers, booleans or null.",
                        "items": {}
                    }
                },
                "required": ["sql"]
            },
            "outputSchema": {
                "type": "object",
                "properties": {
                    "columns": { "type": "array", "items": { "type": "string" } },
                    "rows": { "type": "array", "items": { "type": "array" } },
                    "row_count": { "type": "integer" },
                    "truncated": { "type": "boolean" }
                },
                "required": ["columns", "rows", "row_count", "truncated"]
            },
            "annotations": { "readOnlyHint": true, "openWorldHint": false }
        }),
        json!({
            "name": "list_tables",
            "title": "List tables",
            "description": "Lists the tables and views your tenant can query.",
            "inputSchema": { "type": "object", "properties": {} },
            "annotations": { "readOnlyHint": true, "openWorldHint": false }
        }),
        json!({
            "name": "describe_table",
            "title": "Describe a table",
            "description": "Lists a table's columns with their types and whether they may be null.",
            "inputSchema": {
                "type": "object",
                "properties": { "table": { "type": "string" } },
                "required": ["table"]
            },
            "annotations": { "readOnlyHint": true, "openWorldHint": false }
        }),
    ];
    definitions
        .into_iter()
        .filter_map(|d| match serde_json::from_value(d) {
            Ok(tool) => Some(tool),
            Err(error) => {
                tracing::error!(%error, "tool definition does not parse; skipped");
                None
            }
        })
        .collect()
}

fn failure(message: impl Into<String>) -> CallToolResponse {
    CallToolResult::error(vec![ContentBlock::text(message)]).into()
}

/// The assertion a call carries: `_meta` first, then the HTTP bearer token. Two different
/// ones are refused rather than guessed between.
fn presented_assertion(
    request: &CallToolRequestParams,
    ctx: &RequestContext<RoleServer>,
) -> Result<String, Refused> {
    let from_meta = request
        .meta
        .as_ref()
        .and_then(|m| m.get(assertion::META_KEY))
        .or_else(|| ctx.meta.get(assertion::META_KEY))
        .and_then(Value::as_str);
    let from_header = ctx
        .extensions
        .get::<http::request::Parts>()
        .and_then(|p| p.headers.get(http::header::AUTHORIZATION))
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match (from_meta, from_header) {
        (Some(m), Some(h)) if m != h => Err(Refused::Conflicting),
        (Some(token), _) | (None, Some(token)) => Ok(token.to_owned()),
        (None, None) => Err(Refused::Missing),
    }
}

impl SqlServer {
    pub fn new(backend: Backend, tenancy: Tenancy, limits: Limits) -> Self {
        SqlServer {
            backend: Arc::new(backend),
            tenancy: Arc::new(tenancy),
            limits,
            tools: Arc::new(tool_definitions()),
        }
    }

    async fn tenant(
        &self,
        request: &CallToolRequestParams,
        ctx: &RequestContext<RoleServer>,
    ) -> Result<TenantId, Refused> {
        match self.tenancy.as_ref() {
            Tenancy::Dedicated(tenant) => Ok(tenant.clone()),
            Tenancy::Shared(verifier) => {
                let token = presented_assertion(request, ctx)?;
                verifier.verify(&token).await
            }
        }
    }

    async fn run(
        &self,
        tenant: &TenantId,
        request: &CallToolRequestParams,
    ) -> Result<Value, SqlError> {
        let no_arguments = JsonObject::new();
        let args = request.arguments.as_ref().unwrap_or(&no_arguments);
        let string = |name: &str| match args.get(name) {
            Some(Value::String(s)) => Ok(s.clone()),
            Some(_) => Err(SqlError::Statement(format!(
                "argument `{name}` must be a string"
            ))),
            None => Err(SqlError::Statement(format!(
                "missing required argument `{name}`"
            ))),
        };
        match request.name.as_ref() {
            "query_database" => {
                let sql = string("sql")?;
                let params = match args.get("params") {
                    None | Some(Value::Null) => Vec::new(),
                    Some(Value::Array(values)) => values
                        .iter()
                        .map(Param::from_json)
                        .collect::<Result<_, _>>()
                        .map_err(SqlError::Statement)?,
                    Some(_) => {
                        return Err(SqlError::Statement(
                            "argument `params` must be an array".into(),
                        ));
                    }
                };
                let query = Query {
                    tenant,
                    sql: &sql,
                    params,
                    limits: self.limits,
                };
                let rows = self.backend.query(query).await?;
                Ok(serde_json::to_value(rows).unwrap_or_default())
            }
            "list_tables" => Ok(json!({ "tables": self.backend.list_tables(tenant).await? })),
            "describe_table" => {
                let table = string("table")?;
                let columns = self.backend.describe_table(tenant, &table).await?;
                Ok(json!({ "table": table, "columns": columns }))
            }
            // Checked by the caller.
            _ => Err(SqlError::Statement("unknown tool".into())),
        }
    }
}

impl ServerHandler for SqlServer {
    fn get_info(&self) -> ServerConfig {
        let info = json!({
            "protocolVersion": ProtocolVersion::LATEST_WITH_INITIALIZE,
            "capabilities": { "tools": {} },
            "serverInfo": {
                "name": "palisade-sql",
                "title": "Palisade SQL",
                "version": env!("CARGO_PKG_VERSION"),
            },
            "instructions": "Read-only SQL over your tenant's data: list_tables, describe_table, then query_database.",
        });
        serde_json::from_value(info).unwrap_or_default()
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        Ok(ListToolsResult::with_all_items(self.tools.as_ref().clone()))
    }

    fn get_tool(&self, name: &str) -> Option<Tool> {
        self.tools.iter().find(|t| t.name == name).cloned()
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        if !self.tools.iter().any(|t| t.name == request.name) {
            return Err(McpError::invalid_params(
                format!("unknown tool {:?}", request.name),
                None,
            ));
        }
        let tenant = match self.tenant(&request, &context).await {
            Ok(tenant) => tenant,
            Err(refused) => {
                tracing::warn!(tool = %request.name, reason = %refused, "call refused: no valid tenant assertion");
                return Ok(failure(refused.to_string()));
            }
        };
        match self.run(&tenant, &request).await {
            Ok(value) => Ok(CallToolResult::structured(value).into()),
            Err(error) => {
                tracing::debug!(%tenant, tool = %request.name, %error, "call failed");
                Ok(failure(error.to_string()))
            }
        }
    }
}
