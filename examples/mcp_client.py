#!/usr/bin/env python3
"""A minimal MCP client for the Palisade gateway, using the official `mcp` package (2.3.0).

    python3 examples/mcp_client.py --url http://127.0.0.1:8080/mcp --key KEY
    python3 examples/mcp_client.py --url URL --key KEY --call kit__echo '{"message": "hi"}'

Lists the tools this key may use and, with --call, calls one and prints its text content.
Install the client with `pip install mcp==2.3.0` (tests/clients/requirements.txt pins it).
"""

import argparse
import asyncio
import json
import sys

from mcp.client import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client


async def main(args: argparse.Namespace) -> int:
    headers = {"Authorization": f"Bearer {args.key}"}
    async with create_mcp_http_client(headers=headers) as http:
        # mode="auto" uses 2026-07-28 when the server offers it, else the initialize handshake.
        async with Client(streamable_http_client(args.url, http_client=http), mode=args.mode) as client:
            print(f"connected: protocol {client.protocol_version}")
            tools = await client.list_tools()
            print("tools:", ", ".join(tool.name for tool in tools.tools))
            if not args.call:
                return 0
            tool, raw_args = args.call
            result = await client.call_tool(tool, json.loads(raw_args))
            for block in result.content:
                print(getattr(block, "text", None) or f"[{block.type} content]")
            return 1 if result.is_error else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True, help="the gateway's MCP endpoint, e.g. http://127.0.0.1:8080/mcp")
    parser.add_argument("--key", required=True, help="an API key of the tenant")
    parser.add_argument("--call", nargs=2, metavar=("TOOL", "JSON_ARGS"), help="call TOOL with JSON arguments")
    parser.add_argument("--mode", default="auto", help="auto (default), legacy, or 2026-07-28")
    sys.exit(asyncio.run(main(parser.parse_args())))
