//! The gateway-facing tools (`echo`, `add`, `progress`, `crash`, …): their
//! definitions, in a fixed order, and their behaviour (what they ask of the client is in
//! `asks.rs`).
//!
//! Invariants: `tools/list` order is deterministic; argument problems are
//! `isError` results (spec 2025-11-25), unknown tools are `-32602`; nothing
//! panics on client input.
#![allow(deprecated)]

use std::{
    io::{Read, Seek, SeekFrom, Write},
    sync::{LazyLock, atomic::Ordering},
    time::Duration,
};

use rmcp::{
    ErrorData as McpError, RoleServer,
    model::{
        CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, JsonObject, Tool,
    },
    service::RequestContext,
};
use serde_json::{Value, json};

use crate::asks::{elicitation, log, roots, sampling, send_progress, withdrawn_request};
use crate::{
    catalog, conformance,
    server::{ListChange, Mode, Shared, Testkit, from_json, toggle},
};

/// A 1x1 red PNG.
pub const PNG_BASE64: &str =
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4z8AAAAMBAQDJ/pLvAAAAAElFTkSuQmCC";
/// A 16-bit mono 8 kHz WAV with eight silent samples.
pub const WAV_BASE64: &str =
    "UklGRjQAAABXQVZFZm10IBAAAAABAAEAQB8AAIA+AAACABAAZGF0YRAAAAAAAAAAAAAAAAAAAAAAAAAA";

/// Largest `huge_output` we agree to build (1 GiB).
const HUGE_OUTPUT_MAX: u64 = 1 << 30;
/// Largest `progress` step count.
pub(crate) const PROGRESS_MAX_STEPS: u64 = 100_000;

/// A tool definition with an object input schema.
pub fn def(name: &str, description: &str, properties: Value, required: &[&str]) -> Value {
    json!({
        "name": name,
        "description": description,
        "inputSchema": { "type": "object", "properties": properties, "required": required },
    })
}

/// The static tools, parsed once: `tools/list` and the per-POST schema
/// lookup rmcp does for `Mcp-Param-*` validation only clone `Arc`s.
static STATIC_TOOLS: LazyLock<Vec<Tool>> = LazyLock::new(|| {
    definitions()
        .into_iter()
        .filter_map(|definition| match serde_json::from_value(definition) {
            Ok(tool) => Some(tool),
            Err(error) => {
                tracing::error!(%error, "tool definition does not parse; skipped");
                None
            }
        })
        .collect()
});

/// The dynamic tool `toggle_tool` adds and removes.
static EXTRA_TOOL: LazyLock<Option<Tool>> = LazyLock::new(|| {
    serde_json::from_value(def(
        "extra",
        "Listed while toggle_tool has added it",
        json!({}),
        &[],
    ))
    .ok()
});

/// Every listed tool in a fixed order: gateway tools, conformance fixtures,
/// then `extra` while it is toggled on.
pub fn list(shared: &Shared) -> Vec<Tool> {
    let mut tools = STATIC_TOOLS.clone();
    if shared.extra_tool.load(Ordering::SeqCst) {
        tools.extend(EXTRA_TOOL.clone());
    }
    tools.extend(TENANT_TOOLS.clone());
    tools
}

/// With `TESTKIT_TENANT_TOOLS=acme,globex`: a `<tenant>__monthly_report` tool per tenant, as a
/// server shared by tenants registers per-tenant tools.
static TENANT_TOOLS: LazyLock<Vec<Tool>> = LazyLock::new(|| {
    std::env::var("TESTKIT_TENANT_TOOLS")
        .unwrap_or_default()
        .split(',')
        .filter(|t| !t.is_empty())
        .filter_map(|t| {
            serde_json::from_value(def(
                &format!("{t}__monthly_report"),
                &format!("The monthly report of tenant {t} only"),
                json!({}),
                &[],
            ))
            .ok()
        })
        .collect()
});

/// The listed tool called `name`, if any.
pub fn find(shared: &Shared, name: &str) -> Option<Tool> {
    if name == "extra" {
        return shared
            .extra_tool
            .load(Ordering::SeqCst)
            .then(|| EXTRA_TOOL.clone())
            .flatten();
    }
    STATIC_TOOLS
        .iter()
        .chain(TENANT_TOOLS.iter())
        .find(|tool| tool.name == name)
        .cloned()
}

/// Static tool definitions: gateway tools first, then the conformance fixtures.
fn definitions() -> Vec<Value> {
    let mut tools = vec![
        def(
            "echo",
            "Returns the message unchanged",
            json!({ "message": { "type": "string", "description": "Text to echo" } }),
            &["message"],
        ),
        json!({
            "name": "add",
            "description": "Adds two numbers; the sum is also structured content",
            "inputSchema": {
                "type": "object",
                "properties": { "a": { "type": "number" }, "b": { "type": "number" } },
                "required": ["a", "b"],
            },
            "outputSchema": {
                "type": "object",
                "properties": { "sum": { "type": "number" } },
                "required": ["sum"],
            },
        }),
        def("image", "Returns a tiny PNG image", json!({}), &[]),
        def("audio", "Returns a tiny WAV clip", json!({}), &[]),
        def(
            "embedded_resource",
            "Returns the text resource test://embedded",
            json!({}),
            &[],
        ),
        def(
            "progress",
            "Sends `steps` progress notifications (each with a message of `message_bytes`), then returns \"done\"",
            json!({
                "steps": { "type": "integer", "minimum": 0, "default": 3 },
                "message_bytes": { "type": "integer", "minimum": 0, "default": 0 },
            }),
            &[],
        ),
        def(
            "log",
            "Sends one notifications/message log record (with after_ms: answers first, then logs and asks the client to sample, as a background task would)",
            json!({
                "message": { "type": "string" },
                "after_ms": { "type": "integer" },
                "level": {
                    "type": "string",
                    "default": "info",
                    "enum": ["debug", "info", "notice", "warning", "error", "critical", "alert", "emergency"],
                },
            }),
            &["message"],
        ),
        def(
            "sampling",
            "Asks the client to sample a reply to the prompt (MRTR on 2026-07-28)",
            json!({ "prompt": { "type": "string" } }),
            &["prompt"],
        ),
        def(
            "elicitation",
            "Asks the client for a `name` (form elicitation; MRTR on 2026-07-28)",
            json!({ "message": { "type": "string" } }),
            &["message"],
        ),
        def(
            "roots",
            "Asks the client for its roots (MRTR on 2026-07-28)",
            json!({}),
            &[],
        ),
        def(
            "withdrawn_request",
            "Asks the client for a sampling reply, then withdraws the request (notifications/cancelled) after `ms`",
            json!({ "ms": { "type": "integer", "minimum": 0 } }),
            &[],
        ),
        def("error_result", "Returns an isError result", json!({}), &[]),
        def(
            "slow",
            "Sleeps `ms` milliseconds; stops early when cancelled",
            json!({ "ms": { "type": "integer", "minimum": 0 } }),
            &["ms"],
        ),
        def(
            "crash",
            "Exits the process with status 3 without answering",
            json!({}),
            &[],
        ),
        def(
            "huge_output",
            "Returns one text content of `bytes` 'x' characters",
            json!({ "bytes": { "type": "integer", "minimum": 0 } }),
            &["bytes"],
        ),
        def(
            "endless_line",
            "stdio: writes 'x' to stdout forever without a newline",
            json!({}),
            &[],
        ),
        def(
            "garbage",
            "stdio: writes a line that is not JSON to stdout",
            json!({}),
            &[],
        ),
        def(
            "fs_probe",
            "Reads (or with write=true, writes) a file and says `ok` or the error: for sandbox tests",
            json!({ "path": { "type": "string" }, "write": { "type": "boolean" } }),
            &["path"],
        ),
        def(
            "hog",
            "Allocates and touches `mb` MiB of memory, then reports it: for memory-limit tests",
            json!({ "mb": { "type": "integer" } }),
            &["mb"],
        ),
        def(
            "spawn_children",
            "Starts up to `n` `sleep 30` children and reports how many started: for pids-limit tests",
            json!({ "n": { "type": "integer" } }),
            &["n"],
        ),
        def(
            "whoami",
            "Returns the request _meta, its Authorization header (over HTTP), the TENANT_ID environment variable, and the process's pid, working directory and whole environment",
            json!({}),
            &[],
        ),
        def(
            "count",
            "Appends a line (`message`, or `1`) to $TESTKIT_COUNT_FILE, durably, and returns its line count: counts executions",
            json!({ "message": { "type": "string" } }),
            &[],
        ),
        def(
            "touch",
            "Announces a change of test://watched-resource (notifications/resources/updated)",
            json!({}),
            &[],
        ),
        def(
            "toggle_tool",
            "Adds or removes the `extra` tool and announces the list change",
            json!({}),
            &[],
        ),
    ];
    tools.extend(conformance::definitions());
    tools
}

/// A successful single-text result.
pub fn text(text: impl Into<String>) -> CallToolResponse {
    CallToolResult::success(vec![ContentBlock::text(text)]).into()
}

/// An `isError` single-text result.
pub fn failure(text: impl Into<String>) -> CallToolResponse {
    CallToolResult::error(vec![ContentBlock::text(text)]).into()
}

/// A result built from a JSON literal (`content`, `structuredContent`, …).
pub fn result_json(value: Value) -> Result<CallToolResponse, McpError> {
    let mut value = value;
    if let Some(object) = value.as_object_mut() {
        object
            .entry("resultType")
            .or_insert_with(|| json!("complete"));
    }
    from_json::<CallToolResult>(value).map(Into::into)
}

/// Typed access to tool arguments; problems become the `Err` text of an isError result.
pub struct Args<'a>(pub &'a JsonObject);

impl Args<'_> {
    pub fn string(&self, name: &str) -> Result<String, String> {
        match self.0.get(name) {
            Some(Value::String(value)) => Ok(value.clone()),
            Some(_) => Err(format!("argument '{name}' must be a string")),
            None => Err(format!("missing required argument '{name}'")),
        }
    }

    pub fn string_or(&self, name: &str, default: &str) -> Result<String, String> {
        match self.0.get(name) {
            None | Some(Value::Null) => Ok(default.to_owned()),
            Some(_) => self.string(name),
        }
    }

    pub fn uint(&self, name: &str) -> Result<u64, String> {
        match self.0.get(name) {
            Some(value) => value
                .as_u64()
                .ok_or_else(|| format!("argument '{name}' must be a non-negative integer")),
            None => Err(format!("missing required argument '{name}'")),
        }
    }

    pub fn uint_or(&self, name: &str, default: u64) -> Result<u64, String> {
        match self.0.get(name) {
            None | Some(Value::Null) => Ok(default),
            Some(_) => self.uint(name),
        }
    }

    pub fn number(&self, name: &str) -> Result<&serde_json::Number, String> {
        match self.0.get(name) {
            Some(Value::Number(number)) => Ok(number),
            Some(_) => Err(format!("argument '{name}' must be a number")),
            None => Err(format!("missing required argument '{name}'")),
        }
    }
}

/// `tools/call` dispatch.
pub async fn call(
    kit: &Testkit,
    request: CallToolRequestParams,
    ctx: RequestContext<RoleServer>,
) -> Result<CallToolResponse, McpError> {
    let arguments = request.arguments.clone().unwrap_or_default();
    let args = Args(&arguments);
    let outcome = match request.name.as_ref() {
        "echo" => args.string("message").map(text),
        "add" => add(&args),
        "image" => Ok(result_json(json!({
            "content": [{ "type": "image", "data": PNG_BASE64, "mimeType": "image/png" }],
        }))?),
        "audio" => Ok(result_json(json!({
            "content": [{ "type": "audio", "data": WAV_BASE64, "mimeType": "audio/wav" }],
        }))?),
        "embedded_resource" => Ok(result_json(json!({
            "content": [{
                "type": "resource",
                "resource": {
                    "uri": "test://embedded",
                    "mimeType": "text/plain",
                    "text": catalog::EMBEDDED_TEXT,
                },
            }],
        }))?),
        "progress" => match (args.uint_or("steps", 3), args.uint_or("message_bytes", 0)) {
            (Ok(steps), Ok(bytes)) if steps <= PROGRESS_MAX_STEPS && bytes <= 1 << 20 => {
                let message = (bytes > 0).then(|| "x".repeat(bytes as usize));
                for step in 1..=steps {
                    send_progress(&ctx, step as f64, Some(steps as f64), message.as_deref()).await;
                }
                Ok(text("done"))
            }
            (Ok(_), Ok(_)) => Err(format!(
                "steps must be at most {PROGRESS_MAX_STEPS} and message_bytes at most 1 MiB"
            )),
            (Err(error), _) | (_, Err(error)) => Err(error),
        },
        "log" => log(kit, &ctx, &args).await,
        "sampling" => return sampling(kit, &ctx, &request, &args).await,
        "elicitation" => return elicitation(kit, &ctx, &request, &args).await,
        "roots" => return roots(kit, &ctx, &request).await,
        "withdrawn_request" => match args.uint_or("ms", 200) {
            Ok(ms) => withdrawn_request(&ctx, ms).await,
            Err(error) => Err(error),
        },
        "error_result" => Ok(failure("something failed")),
        "slow" => match args.uint("ms") {
            Ok(ms) => {
                // Tests wait for this line to know a call is in flight upstream.
                tracing::info!(id = %ctx.id, ms, "slow started");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(ms)) => Ok(text("slept")),
                    () = ctx.ct.cancelled() => {
                        tracing::info!(id = %ctx.id, "slow cancelled");
                        return Err(McpError::internal_error("cancelled", None));
                    }
                }
            }
            Err(error) => Err(error),
        },
        "crash" => {
            tracing::warn!("crash tool called: exiting with status 3");
            std::process::exit(3);
        }
        "huge_output" => match args.uint("bytes") {
            Ok(bytes) if bytes <= HUGE_OUTPUT_MAX => {
                Ok(text("x".repeat(usize::try_from(bytes).unwrap_or(0))))
            }
            Ok(_) => Err(format!("bytes must be at most {HUGE_OUTPUT_MAX}")),
            Err(error) => Err(error),
        },
        "endless_line" => match kit.shared.mode {
            Mode::Stdio => endless_line().await,
            Mode::Http => Ok(failure("endless_line only applies to stdio mode")),
        },
        "garbage" => match kit.shared.mode {
            Mode::Stdio => garbage(),
            Mode::Http => Ok(failure("garbage only applies to stdio mode")),
        },
        "fs_probe" => match args.string("path") {
            Ok(path) => {
                let write = args
                    .0
                    .get("write")
                    .and_then(Value::as_bool)
                    .unwrap_or(false);
                let outcome = if write {
                    std::fs::write(&path, "probe")
                } else {
                    std::fs::read(&path).map(drop)
                };
                Ok(text(match outcome {
                    Ok(()) => "ok".to_owned(),
                    Err(e) => format!("error: {:?}", e.kind()),
                }))
            }
            Err(error) => Err(error),
        },
        "hog" => match args.uint("mb") {
            Ok(mb) => {
                let mut v: Vec<u8> = Vec::new();
                for _ in 0..mb {
                    // Touch every page so it is really resident.
                    v.extend(std::iter::repeat_n(1u8, 1 << 20));
                }
                Ok(text(format!("allocated {} MiB", v.len() >> 20)))
            }
            Err(error) => Err(error),
        },
        "spawn_children" => match args.uint("n") {
            Ok(n) => {
                let mut started = 0;
                let mut failure = String::new();
                for _ in 0..n {
                    match std::process::Command::new("sleep").arg("30").spawn() {
                        Ok(_) => started += 1,
                        Err(e) => {
                            failure = format!("{:?}", e.kind());
                            break;
                        }
                    }
                }
                Ok(text(
                    json!({ "started": started, "error": failure }).to_string(),
                ))
            }
            Err(error) => Err(error),
        },
        "whoami" => {
            let meta = serde_json::to_value(&ctx.meta).unwrap_or_else(|_| json!({}));
            let tenant = std::env::var("TENANT_ID").ok();
            // Over HTTP: the request's Authorization header, as the gateway sent it.
            let authorization = ctx
                .extensions
                .get::<http::request::Parts>()
                .and_then(|p| p.headers.get("authorization"))
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let env: serde_json::Map<String, Value> = std::env::vars()
                .map(|(k, v)| (k, Value::String(v)))
                .collect();
            let cwd = std::env::current_dir()
                .map(|d| d.display().to_string())
                .unwrap_or_default();
            Ok(text(
                json!({
                    "meta": meta,
                    "authorization": authorization,
                    "tenant_env": tenant,
                    "pid": std::process::id(),
                    "cwd": cwd,
                    "env": env,
                })
                .to_string(),
            ))
        }
        "count" => count(args.string_or("message", "1")).await,
        "touch" => {
            let uri = rmcp::model::ResourceUpdatedNotificationParam::new("test://watched-resource");
            match ctx.peer.notify_resource_updated(uri).await {
                Ok(()) => Ok(text("touched")),
                Err(error) => Err(format!("the update could not be sent: {error}")),
            }
        }
        "toggle_tool" => {
            let added = toggle(&kit.shared.extra_tool);
            kit.list_changed(&ctx, ListChange::Tools).await;
            Ok(text(if added {
                "extra tool added"
            } else {
                "extra tool removed"
            }))
        }
        "extra" if kit.shared.extra_tool.load(Ordering::SeqCst) => Ok(text("extra")),
        name if TENANT_TOOLS.iter().any(|t| t.name == name) => {
            let tenant = name.split("__").next().unwrap_or_default();
            Ok(text(format!("monthly report of {tenant}")))
        }
        name => return conformance::call(kit, name, &request, &args, ctx).await,
    };
    Ok(outcome.unwrap_or_else(failure))
}

fn add(args: &Args<'_>) -> Result<CallToolResponse, String> {
    let (a, b) = (args.number("a")?, args.number("b")?);
    let sum = match (a.as_i64(), b.as_i64()) {
        (Some(a), Some(b)) => a.checked_add(b).map(Value::from),
        _ => None,
    };
    let sum = match sum {
        Some(sum) => sum,
        None => {
            let total = a.as_f64().unwrap_or(f64::NAN) + b.as_f64().unwrap_or(f64::NAN);
            serde_json::Number::from_f64(total)
                .map(Value::Number)
                .ok_or("the sum is not a finite number")?
        }
    };
    result_json(json!({
        "content": [{ "type": "text", "text": sum.to_string() }],
        "structuredContent": { "sum": sum },
    }))
    .map_err(|error| error.message.to_string())
}

/// Writes 'x' to the real stdout until a write fails; never answers.
async fn endless_line() -> Result<CallToolResponse, String> {
    tracing::warn!("endless_line: writing to stdout without a newline");
    std::thread::spawn(|| {
        let stdout = std::io::stdout();
        let mut out = stdout.lock();
        let chunk = [b'x'; 8192];
        while out.write_all(&chunk).and_then(|()| out.flush()).is_ok() {}
        tracing::warn!("endless_line: stdout closed");
    });
    std::future::pending().await
}

/// Writes a non-JSON line to the real stdout, then answers normally.
fn garbage() -> Result<CallToolResponse, String> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    out.write_all(b"this is not json\n")
        .and_then(|()| out.flush())
        .map_err(|error| format!("writing garbage failed: {error}"))?;
    Ok(text("sent garbage"))
}

/// Appends "1\n" (O_APPEND + fsync) to $TESTKIT_COUNT_FILE and counts its lines.
async fn count(line: Result<String, String>) -> Result<CallToolResponse, String> {
    let line = line?.replace('\n', " ") + "\n";
    let Some(path) = std::env::var_os("TESTKIT_COUNT_FILE") else {
        return Err("TESTKIT_COUNT_FILE is not set".to_owned());
    };
    let counted = tokio::task::spawn_blocking(move || -> std::io::Result<usize> {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(&path)?;
        file.write_all(line.as_bytes())?;
        file.sync_all()?;
        file.seek(SeekFrom::Start(0))?;
        let mut contents = String::new();
        file.read_to_string(&mut contents)?;
        Ok(contents.lines().count())
    })
    .await
    .map_err(|error| format!("count task failed: {error}"))?
    .map_err(|error| format!("count file: {error}"))?;
    Ok(text(counted.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_definition_parses_and_names_are_unique_and_valid() {
        assert_eq!(STATIC_TOOLS.len(), definitions().len());
        assert!(EXTRA_TOOL.is_some());
        let mut names: Vec<&str> = STATIC_TOOLS.iter().map(|tool| tool.name.as_ref()).collect();
        assert!(names.iter().all(|name| {
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        }));
        assert!(STATIC_TOOLS.iter().all(|tool| tool.description.is_some()));
        names.sort_unstable();
        let count = names.len();
        names.dedup();
        assert_eq!(names.len(), count, "duplicate tool names");
    }

    #[test]
    fn extra_is_listed_and_found_only_while_toggled() {
        let shared = Shared::new(Mode::Stdio, false);
        assert!(find(&shared, "extra").is_none());
        assert!(toggle(&shared.extra_tool));
        assert_eq!(list(&shared).last().map(|t| t.name.as_ref()), Some("extra"));
        assert!(find(&shared, "extra").is_some());
        assert!(find(&shared, "echo").is_some());
        assert!(find(&shared, "nope").is_none());
    }
}
