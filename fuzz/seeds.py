#!/usr/bin/env python3
"""Writes the seed corpora under fuzz/corpus/<target>/ from the crates' test fixtures.

The seeds are small and committed; run this again only to change them. Fields of multi-field
inputs are separated by a NUL byte (see each target's header comment). Standard library only.
"""

import hashlib
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CORPUS = os.path.join(HERE, "corpus")


def write(target, seeds):
    """Replaces the target's seed-* files; finding-* files (reproducers) stay."""
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    for name in os.listdir(d):
        if name.startswith("seed-"):
            os.remove(os.path.join(d, name))
    for i, s in enumerate(seeds):
        if isinstance(s, str):
            s = s.encode()
        with open(os.path.join(d, "seed-%02d" % i), "wb") as f:
            f.write(s)


def nul(*parts):
    return b"\0".join(p.encode() if isinstance(p, str) else p for p in parts)


def read(path):
    with open(os.path.join(ROOT, path), "rb") as f:
        return f.read()


# JSON-RPC envelopes: crates/mcp-wire/src/jsonrpc.rs and crates/palisade/tests.
MESSAGES = [
    '{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"b":1,  "a":{"x":[1, 2]}}}',
    '{"jsonrpc":"2.0","method":"x"}',
    '{"jsonrpc":"2.0","id":"a","result":{}}',
    '{"jsonrpc":"2.0","id":null,"error":{"code":1,"message":"m"}}',
    '[{"jsonrpc":"2.0","method":"x"}]',
    '{"jsonrpc":"2.0","id":1.5,"method":"x"}',
    '{"jsonrpc":"2.0","id":1,"result":{},"error":{}}',
    '{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25",'
    '"capabilities":{},"clientInfo":{"name":"oauth-test","version":"1"}}}',
    '{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"kit__echo",'
    '"arguments":{"message":"keys","b":1,"a":2},"_meta":{"progressToken":"mine"}}}',
    '{"a":"[[[[\\"[[[[","b":[1]}',
    "[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]",
    "{nope",
]
write("jsonrpc_message", MESSAGES)

# SSE streams: crates/mcp-wire/src/sse.rs tests. Byte 0: limit/16, byte 1: chunk seed.
write("sse_decoder", [
    b"\x40\x00: hi\r\nid: 1\r\ndata: {\"a\":\r\ndata: 1}\r\n\r\nevent: message\ndata: x\n\n",
    b"\x40\x03id: s1_0\nretry: 250\ndata: \n\n: ping\n\nid: s1_1\ndata: {\"a\":\ndata: 2}\n\n"
    b"event: message\ndata: {}\n\nid: s1_9\n\nretry: x\n\n",
    b"\x01\x05data: 0123456789012345678901234567890123456789\n\n",
    b"\x10\x07id: 7\nevent: message\ndata: {\ndata:   \"a\": 1\ndata: }\n\n",
])

# Stdio lines: crates/mcp-wire/src/lines.rs tests. Byte 0: limit - 1 (mod 64), byte 1: mode
# (even: refuse, odd: truncate) and chunk seed.
write("stdio_lines", [
    b"\x07\x00one\r\ntwo\nthree-is-long\nfour",
    b"\x07\x01one\r\ntwo\nthree-is-long\nfour",
    b"\x03\x03abcd\r\nabcd\r",
    b"\x3f\x02" + MESSAGES[0].encode() + b"\n" + MESSAGES[8].encode() + b"\r\n\n \n",
])

# Mcp-Param-* headers: crates/mcp-wire/src/param_headers.rs and testkit's conformance tool.
TOOL = ('{"name":"t","inputSchema":{"type":"object","properties":{"region":{"type":"string",'
        '"x-mcp-header":"Region"},"q":{"type":"string"},"n":{"x-mcp-header":"N"}}}}')
write("param_headers", [
    nul(TOOL, '{"region":"us-west1","n":42}', "us-west1"),
    nul(TOOL, '{"region":" padded ","q":"x"}', "=?base64?IHBhZGRlZCA=?="),
    nul(TOOL, '{"region":"h\u00e9llo"}', "=?base64?SGVsbG8?="),
    nul(TOOL, '{"region":true,"n":null}', "=?base64?SGVs!!!bG8=?="),
    nul('{"name":"x"}', "{}", "=?base64?SGVsbG8="),
])

# Session ids (Mcp-Session-Id values).
write("session_id", [
    "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    "not-a-session",
    "",
    "x" * 43,
])

# Sealed session ids (a fleet key): base64url of key id, nonce, AES-GCM ciphertext and tag.
write("sealed_session_id", [
    "B" + "A" * 100,
    "AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyAhIiMkJSYnKCkqKywtLi8wMTIzNDU2Nzg5",
    "",
    "!" * 10,
    "A" * 2000,
])

# Last-Event-ID: byte 0 shapes the streams (crates/palisade/src/resume.rs tests).
write("last_event_id", [
    b"\x1b1_0", b"\x1b1_2", b"\x1b2_1", b"\xdb2_0", b"\x1b3_0", b"\x1b1_99",
    b"\x1b+1_1", b"\x1b1_18446744073709551615", b"\x1b_", b"\x1b1__1",
])

# List cursors: 2 bytes of list length, then the cursor (base64url of "palisade:<offset>").
import base64  # noqa: E402


def cursor(s):
    return base64.urlsafe_b64encode(s.encode()).rstrip(b"=")


write("list_cursor", [
    b"\xd2\x03",
    b"\x28\x0a" + cursor("palisade:1000"),
    b"\x28\x0a" + cursor("palisade:2600"),
    b"\x05\x00" + cursor("palisade:99999999999999999999999"),
    b"\x05\x00bogus",
    b"\x05\x00" + cursor("palisade:-1"),
])

# requestState / round-trip fields: crates/palisade/tests/it/eras.rs and framing.rs.
write("request_state", [
    '{"name":"kit__ask","arguments":{},"requestState":"palisade.abc",'
    '"inputResponses":{"k":{"action":"decline"}}}',
    '{"requestState":7,"inputResponses":[1]}',
    '{"requestState":"a","requestState":"palisade.b"}',
    '{"inputResponses":{"user_name":12345},"requestState":"s\\u0000t"}',
    '{"name":"a__b", "arguments":{"z":1,  "y":[2]},"x":null}',
    '{"+equestSestStses":33e3333}',
])

# Authorization headers.
write("bearer_header", [
    "Bearer pal_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    "bearer   eyJhbGciOiJFUzI1NiJ9.e30.c2ln  ",
    "Basic dXNlcjpwYXNz",
    "Bearer",
    "hmac-sha256:" + "ab" * 32,
])

# Bearer tokens: mode byte, then a token (raw) or header NUL payload (signed).
def b64u(s):
    return base64.urlsafe_b64encode(s.encode()).rstrip(b"=").decode()


write("jwt_verify", [
    b"\x00" + (b64u('{"alg":"none"}') + "." + b64u('{"iss":"https://idp.example.test/a"}') + ".").encode(),
    b"\x00" + (b64u('{"alg":"HS256","kid":"ec1"}') + "." + b64u('{"sub":"u"}') + ".c2ln").encode(),
    b"\x00a.b.c.d",
    b"\x80" + nul('{"crit":["exp"]}', '{}'),
    b"\x81" + nul('{}', '{"scope":"a b","roles":["admin",""],"jti":"j1"}'),
    b"\xa1" + nul('{}', '{"tenant":"globex","aud":["x","https://mcp.example.test/mcp"]}'),
    b"\x82" + nul('{"kid":"rsa1","alg":"PS256"}', '{"exp":1e30,"nbf":99999999999}'),
    b"\x40" + nul('{"alg":"ES256","kid":"ec1"}', '{"iss":"https://idp.example.test/a","aud":"https://mcp.example.test/mcp","sub":"u","exp":9999999999,"tenant":"acme"}'),
])

# JWKS documents: crates/palisade-oauth/src/jwks.rs tests and testing.rs keys.
EC = '{"kty":"EC","crv":"P-256","kid":"ec1","alg":"ES256","use":"sig","x":"$EC_X","y":"$EC_Y"}'
ED = '{"kty":"OKP","crv":"Ed25519","kid":"ed1","alg":"EdDSA","x":"$ED_X"}'
RSA = '{"kty":"RSA","kid":"rsa1","alg":"RS256","n":"$RSA_N","e":"$RSA_E"}'
PS = '{"kty":"RSA","kid":"ps1","n":"$RSA_N","e":"$RSA_E"}'
META = '{"issuer":"$ISSUER","jwks_uri":"$JWKS","response_types_supported":["code"]}'
write("jwks_parse", [
    nul('{"keys":[%s,%s,%s,%s]}' % (EC, ED, RSA, PS), "", "\x00public, max-age=600"),
    nul('{"keys":[%s,{"kty":"oct","k":"c2VjcmV0"},{"kty":"EC","crv":"P-384","x":"AA","y":"AA"}]}' % EC, "", ""),
    nul('{"keys":[{"kty":"RSA","kid":"rsa1","n":"AQAB","e":"AQAB"},%s,%s]}' % (ED, ED.replace("ed1", "ed1")), "", "\x00max-age=\"5\""),
    nul('{"keys":[%s]}' % EC.replace('"use":"sig"', '"use":"enc"'), "", ""),
    nul('{"keys":[%s]}' % ED, META, "\x01no-cache"),
    nul("{}", '{"issuer":"https://other.example","jwks_uri":"https://idp.example.test/jwks"}', "\x01"),
    nul('{"keys":[%s]}' % EC.replace('"alg":"ES256"', '"alg":"RS256"'), "", ""),
])

# Configs: the examples and documentation.
write("config_toml", [
    read("examples/palisade.toml"),
    read("docs/examples/ecosystem.toml"),
    "",
    '[listen]\nmcp = "127.0.0.1:0"\n[oauth]\nresource = "https://mcp.example.test/mcp"\n'
    '[[oauth.issuers]]\nissuer = "https://idp.example.test"\ntenant_claim = "/tenant"\n',
    '[[tenants]]\nid = "acme"\n[tenants.policy]\nallow_tools = ["kit/*"]\ndeny_tools = ["*/delete_*"]\n',
])


# Audit trails: record lines hashed as palisade-audit's chain does (no checkpoints: those need
# the writer's key).
FIELDS = ["seq", "id", "kind", "time", "tenant", "subject", "session", "method", "server", "target",
          "args_fingerprint", "key_id", "args_bytes", "decision", "outcome", "latency_us", "replica",
          "prev_hash"]


def trail(n, start_seq=1, prev=b"\0" * 32):
    lines = []
    for i in range(n):
        seq = start_seq + i
        rec = {"seq": seq, "id": "0190f5b2-7c1a-7000-8000-%012d" % seq, "kind": ["BEGIN", "END"][i % 2],
               "time": "2026-11-27T17:02:40.123Z", "tenant": "acme", "subject": "key:alice",
               "session": None, "method": "tools/call", "server": "kit", "target": "echo",
               "args_fingerprint": None, "key_id": None, "args_bytes": 17 if i % 2 == 0 else None,
               "decision": "allow", "outcome": None if i % 2 == 0 else "ok",
               "latency_us": None if i % 2 == 0 else 1234, "replica": "r1", "prev_hash": prev.hex()}
        body = "{" + ",".join(json.dumps(k) + ":" + json.dumps(rec[k], ensure_ascii=False, separators=(",", ":"))
                              for k in FIELDS)
        h = hashlib.sha256(prev + body.encode()).digest()
        lines.append(body + ',"hash":"%s"}' % h.hex())
        prev = h
    return lines, prev


t3, _ = trail(3)
t2a, head = trail(2)
t2b, _ = trail(2, 3, head)
cp = '{"checkpoint":{"seq":2,"hash":"%s","time":"2026-11-27T17:02:41.000Z","reason":"rotate"},"sig":"AAAA"}' % head.hex()
write("audit_verify", [
    "\n".join(t3) + "\n",
    "\n".join(t2a) + "\n" + cp + "\n\0" + "\n".join(t2b) + "\n",
    "\n".join([t3[0], t3[2], t3[1]]) + "\n",
    "\n".join(t3) + "\n" + t3[2][:40],
    '{"checkpoint":{"seq":0,"hash":"%s","time":"t","reason":"close"},"sig":"AAAA"}\n' % ("0" * 64),
    '{"b":[1.0,1e21,-0,0.000001],"a":"\\u00e9\\ud83d\\ude00","c":{"z":null,"y":true}}\n',
])

# Audit chains: ops NUL tamper NUL pool of field values (one per line).
POOL = "acme\nkey:alice\ntools/call\n\u00e9\u0000\"\\\n{\"b\":1,\"a\":[2.5,1e3]}\nkit\n2026-11-27T17:02:40.123Z"
write("audit_chain", [
    nul(b"\x00\x01\x02\x31\x03\x00", b"\x01\x00\x05\x41", POOL),
    nul(b"\x00\x01", b"", POOL),
    nul(b"\x03\x03\x00", b"\x00\x00\x00\x7d", "x"),
    nul(b"\x21\x35\x02", b"\x02\x00\x09\x0a", POOL),
])

# Policies and globs: crates/palisade/src/policy.rs tests.
write("policy_glob", [
    nul('{"allow_tools":["kit/*"],"deny_tools":["*/delete_*","shutdown"]}', "ec*o", "kit", "echo"),
    nul('{"tool_scopes":{"admin_*":["admin","mcp"]},"roles":{"operator":["admin"]}}', "*_admin", "kit", "db_admin"),
    nul('{"rates":{"tenant":{"per_second":5.0,"burst":10},"tools":{"kit/*":{"per_second":0.5,"burst":1}},'
        '"quota_weight":2.5},"tier":"gold","servers":["kit"]}', "*a*b*c*d", "kit", "xxaxxbxxcxx"),
    nul('{"allow_tools":["*"],"bogus":1}', "a?c", "s", "abc"),
    nul('{"deny_tools":["a/b/c"]}', "*/*", "", ""),
])

# SQL statements: crates/palisade-sql/src/statement.rs tests.
write("sql_statement", [
    "SELECT 1",
    "  -- a comment\n select 1",
    "/* a /* nested */ comment */WITH x AS (SELECT 1) SELECT * FROM x",
    "values (1);  \n",
    "/* hide */ RESET ROLE",
    "-- x\nCOPY orders TO STDOUT",
    "/* unclosed",
    "SELECT 1; SELECT 2",
])

# Tenant assertions (palisade-sql): mode byte, then a token or header NUL payload.
write("sql_assertion", [
    b"\x00" + (b64u('{"alg":"EdDSA","kid":"g1"}') + "." + b64u('{"tenant":"acme"}') + ".AAAA").encode(),
    b"\x00" + (b64u('{"alg":"ES256","kid":"ec"}') + "." + b64u('{}') + ".").encode(),
    b"\x80" + nul('{}', '{}'),
    b"\x80" + nul('{"kid":"nope"}', '{"tenant":"Acme/../x","aud":["sql","x"],"exp":1,"iat":0}'),
    b"\x80" + nul('{}', '{"iat":99999999999,"tenant":"a-b"}'),
    b"\x40" + nul('{"alg":"EdDSA","kid":"g1"}', '{"iss":"palisade","aud":"sql","exp":99999999999,"iat":99999999000,"tenant":"acme"}'),
])

if __name__ == "__main__":
    total = sum(os.path.getsize(os.path.join(dp, f)) for dp, _, fs in os.walk(CORPUS) for f in fs)
    print("seed corpus: %d bytes" % total, file=sys.stderr)
