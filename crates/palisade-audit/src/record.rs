//! Audit records, RFC 8785 canonical JSON and argument fingerprints.
//!
//! A [`Record`] never holds call arguments: only `args_fingerprint` (HMAC-SHA256 over the
//! canonical JSON of the arguments, under a per-tenant key derived by HKDF-SHA256 from a master
//! key) plus `key_id` and `args_bytes`. Field order is fixed by declaration order, `hash` last.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Mutex;

use aws_lc_rs::{hkdf, hmac};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::time::now_rfc3339;

/// Record phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Kind {
    /// Written (durably) before a call is forwarded.
    Begin,
    /// Outcome and latency of a call; carries the BEGIN's id.
    End,
    /// Refused by policy, a limit or a breaker.
    Denied,
    /// A change made through the admin API.
    Admin,
}

/// One audit record. Serialized in declaration order; `hash` is always the last field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Position in the chain, from 1; assigned by [`crate::Chain`].
    pub seq: u64,
    /// Audit id (UUIDv7); END and DENIED carry the BEGIN's id.
    pub id: String,
    pub kind: Kind,
    /// RFC 3339 UTC with milliseconds.
    pub time: String,
    pub tenant: String,
    /// Keyed hash of the subject, or a value the caller marked as non-personal.
    pub subject: String,
    pub session: Option<String>,
    pub method: String,
    pub server: Option<String>,
    /// Tool, resource or prompt name (or the admin object).
    pub target: Option<String>,
    /// Hex HMAC-SHA256 of the canonical arguments.
    pub args_fingerprint: Option<String>,
    /// Id of the fingerprint key (for rotation).
    pub key_id: Option<String>,
    pub args_bytes: Option<u64>,
    pub decision: Option<String>,
    pub outcome: Option<String>,
    pub latency_us: Option<u64>,
    pub replica: String,
    /// Hex SHA-256 of the previous record; assigned by the chain.
    pub prev_hash: String,
    /// Hex SHA-256 of this record; assigned by the chain. Must stay the last field.
    pub hash: String,
}

impl Record {
    /// A record with the given identity fields; id and time are filled in, chain fields empty.
    pub fn new(kind: Kind, tenant: &str, subject: &str, method: &str) -> Self {
        Record {
            seq: 0,
            id: new_uuid_v7(),
            kind,
            time: now_rfc3339(),
            tenant: tenant.to_owned(),
            subject: subject.to_owned(),
            session: None,
            method: method.to_owned(),
            server: None,
            target: None,
            args_fingerprint: None,
            key_id: None,
            args_bytes: None,
            decision: None,
            outcome: None,
            latency_us: None,
            replica: String::new(),
            prev_hash: String::new(),
            hash: String::new(),
        }
    }
}

/// A new UUIDv7 string: 48-bit Unix milliseconds, version 7, variant 10, random rest.
pub fn new_uuid_v7() -> String {
    let ms = crate::time::now_ms() as u64;
    let mut b: [u8; 16] = rand::random();
    b[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
    b[6] = (b[6] & 0x0f) | 0x70;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// RFC 8785 (JCS) canonical JSON: keys sorted by UTF-16 code units, no whitespace, minimal
/// string escapes, numbers in ECMAScript form. Integers that fit `i64`/`u64` are written exactly.
pub fn canonical_json(v: &Value) -> String {
    let mut out = String::new();
    write_canonical(v, &mut out);
    out
}

fn write_canonical(v: &Value, out: &mut String) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                let _ = write!(out, "{u}");
            } else if let Some(i) = n.as_i64() {
                let _ = write!(out, "{i}");
            } else if let Some(f) = n.as_f64() {
                out.push_str(&es_number(f));
            } else {
                out.push_str("null");
            }
        }
        Value::String(s) => write_string(s, out),
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(x, out);
            }
            out.push(']');
        }
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort_by(|a, b| a.encode_utf16().cmp(b.encode_utf16()));
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_string(k, out);
                out.push(':');
                if let Some(x) = m.get(*k) {
                    write_canonical(x, out);
                }
            }
            out.push('}');
        }
    }
}

fn write_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\u{c}' => out.push_str("\\f"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// ECMAScript `Number.prototype.toString` for finite doubles.
fn es_number(f: f64) -> String {
    if f == 0.0 {
        return "0".to_owned();
    }
    if !f.is_finite() {
        return "null".to_owned();
    }
    let neg = f < 0.0;
    // Shortest round-trip digits: "d.ddddde±x".
    let e = format!("{:e}", f.abs());
    let (mant, exp) = e.split_once('e').unwrap_or((e.as_str(), "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let digits: String = mant.chars().filter(|c| c.is_ascii_digit()).collect();
    let k = digits.len() as i32;
    let n = exp + 1;
    let mut s = String::new();
    if neg {
        s.push('-');
    }
    if k <= n && n <= 21 {
        s.push_str(&digits);
        s.extend(std::iter::repeat_n('0', (n - k) as usize));
    } else if 0 < n && n <= 21 {
        s.push_str(&digits[..n as usize]);
        s.push('.');
        s.push_str(&digits[n as usize..]);
    } else if -6 < n && n <= 0 {
        s.push_str("0.");
        s.extend(std::iter::repeat_n('0', (-n) as usize));
        s.push_str(&digits);
    } else {
        s.push_str(&digits[..1]);
        if k > 1 {
            s.push('.');
            s.push_str(&digits[1..]);
        }
        let _ = write!(s, "e{}{}", if n - 1 < 0 { '-' } else { '+' }, (n - 1).abs());
    }
    s
}

/// Derives per-tenant fingerprint keys from a master key and fingerprints arguments.
pub struct Fingerprinter {
    master: [u8; 32],
    key_id: String,
    /// Derived keys by tenant: one HKDF per tenant, not per call.
    keys: Mutex<HashMap<String, hmac::Key>>,
}

impl Fingerprinter {
    /// `key_id` names this master key in records so keys can rotate.
    pub fn new(master: [u8; 32], key_id: &str) -> Self {
        Fingerprinter {
            master,
            key_id: key_id.to_owned(),
            keys: Mutex::new(HashMap::new()),
        }
    }

    /// The key id written into records.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    fn tenant_key(&self, tenant: &str) -> hmac::Key {
        let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(key) = keys.get(tenant) {
            return key.clone();
        }
        let key = self.derive(tenant);
        keys.insert(tenant.to_owned(), key.clone());
        key
    }

    fn derive(&self, tenant: &str) -> hmac::Key {
        let mut k = [0u8; 32];
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, self.key_id.as_bytes()).extract(&self.master);
        let info = [tenant.as_bytes()];
        // Expanding 32 bytes from SHA-256 cannot fail (limit is 255 * 32).
        if let Ok(okm) = prk.expand(&info, hkdf::HKDF_SHA256) {
            let _ = okm.fill(&mut k);
        }
        hmac::Key::new(hmac::HMAC_SHA256, &k)
    }

    /// `(key_id, hex HMAC-SHA256(tenant key, canonical_json(args)))`.
    pub fn fingerprint(&self, tenant: &str, args: &Value) -> (String, String) {
        let key = self.tenant_key(tenant);
        let tag = hmac::sign(&key, canonical_json(args).as_bytes());
        (self.key_id.clone(), hex::encode(tag.as_ref()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn num(s: &str) -> String {
        let v: Value = serde_json::from_str(s).unwrap();
        canonical_json(&v)
    }

    /// Found by fuzzing: without exact float parsing, canonicalizing twice gave another text
    /// (and so another fingerprint for the same arguments).
    #[test]
    fn canonical_json_is_idempotent_for_extreme_numbers() {
        for text in [
            "4444444444444444110408734",
            "1.7976931348623157e308",
            "5e-324",
            "0.1",
        ] {
            let once = num(text);
            assert_eq!(num(&once), once, "{text}");
        }
    }

    #[test]
    fn jcs_key_order_and_nesting() {
        let v = json!({"b": [3, {"z": 1, "a": null}], "a": true, "": "x"});
        assert_eq!(
            canonical_json(&v),
            r#"{"":"x","a":true,"b":[3,{"a":null,"z":1}]}"#
        );
    }

    #[test]
    fn jcs_rfc8785_sort_vector() {
        // RFC 8785 §3.2.3: sorting by UTF-16 code units.
        let v: Value = serde_json::from_str(
            r#"{"\u20ac":"Euro Sign","\r":"Carriage Return","\ufb33":"Hebrew Letter Dalet With Dagesh","1":"One","\ud83d\ude00":"Emoji: Grinning Face","\u0080":"Control","\u00f6":"Latin Small Letter O With Diaeresis"}"#,
        )
        .unwrap();
        let keys: Vec<String> = canonical_json(&v)
            .trim_matches(|c| c == '{' || c == '}')
            .split(',')
            .map(|kv| kv.split(':').next().unwrap().to_owned())
            .collect();
        assert_eq!(
            keys,
            vec![
                "\"\\r\"",
                "\"1\"",
                "\"\u{80}\"",
                "\"\u{f6}\"",
                "\"\u{20ac}\"",
                "\"\u{1f600}\"",
                "\"\u{fb33}\""
            ]
        );
    }

    #[test]
    fn jcs_strings() {
        let v = json!("a\"b\\c\u{1}\n\u{7f}é\u{2028}😀");
        assert_eq!(
            canonical_json(&v),
            "\"a\\\"b\\\\c\\u0001\\n\u{7f}é\u{2028}😀\""
        );
    }

    #[test]
    fn jcs_numbers() {
        assert_eq!(num("1e21"), "1e+21");
        assert_eq!(num("1e20"), "100000000000000000000");
        assert_eq!(num("0.1"), "0.1");
        assert_eq!(num("-0.0"), "0");
        assert_eq!(num("-0"), "0");
        assert_eq!(num("1.0"), "1");
        assert_eq!(num("123.456e2"), "12345.6");
        assert_eq!(num("1e-7"), "1e-7");
        assert_eq!(num("0.000001"), "0.000001");
        assert_eq!(num("-1.5e-7"), "-1.5e-7");
        assert_eq!(num("4.5"), "4.5");
        assert_eq!(num("2e-3"), "0.002");
        assert_eq!(num("9007199254740993"), "9007199254740993");
        assert_eq!(num("-42"), "-42");
        assert_eq!(num("5e-324"), "5e-324");
        assert_eq!(num("1.7976931348623157e308"), "1.7976931348623157e+308");
        // serde_json's default float parser may be off by one ulp for long inputs, so check the
        // formatter on the exact double from RFC 8785 Appendix B.
        #[allow(clippy::excessive_precision)]
        let f = 333333333.33333329_f64;
        assert_eq!(es_number(f), "333333333.3333333");
        assert_eq!(es_number(1e21), "1e+21");
        assert_eq!(es_number(-0.0), "0");
    }

    #[test]
    fn fingerprints() {
        let f = Fingerprinter::new([7u8; 32], "k1");
        let a = json!({"q": "alice@example.com", "n": 1});
        let b = json!({"n": 1, "q": "alice@example.com"});
        let (kid, fa) = f.fingerprint("t1", &a);
        assert_eq!(kid, "k1");
        assert_eq!(fa.len(), 64);
        assert_eq!(f.fingerprint("t1", &b).1, fa);
        assert_ne!(f.fingerprint("t2", &a).1, fa);
        assert_ne!(
            Fingerprinter::new([7u8; 32], "k2").fingerprint("t1", &a).1,
            fa
        );
        assert_ne!(f.fingerprint("t1", &json!({"n": 2})).1, fa);
    }

    #[test]
    fn uuid() {
        let u = new_uuid_v7();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "7");
        assert!(matches!(&u[19..20], "8" | "9" | "a" | "b"));
    }
}
