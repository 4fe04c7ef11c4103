// A tiny reverse proxy that adds `Authorization: Bearer <key>` to every request.
//
// The conformance suite's server mode cannot send an Authorization header, so it talks
// to this proxy, which forwards to the gateway. Everything else passes through untouched:
// method, path, query, every header the client sent (Host and Origin included, so the
// gateway's DNS-rebinding checks see what the suite sent), the body, and the response
// status, headers and body, streamed chunk by chunk (SSE flows unbuffered). When the
// client goes away the upstream request is aborted, so a closed stream still reads as
// cancellation to the gateway.
import http from 'node:http';

/**
 * @param {string} target  the gateway's MCP URL, e.g. http://127.0.0.1:1234/mcp
 * @param {string|null} key  the API key to inject (null: pass through unchanged)
 * @returns {Promise<{url: string, close: () => Promise<void>}>}
 */
export async function startProxy(target, key) {
  const upstream = new URL(target);
  const agent = new http.Agent({ keepAlive: true });
  const server = http.createServer((req, res) => {
    const headers = [];
    for (let i = 0; i < req.rawHeaders.length; i += 2) {
      const name = req.rawHeaders[i];
      if (key !== null && name.toLowerCase() === 'authorization') continue;
      headers.push(name, req.rawHeaders[i + 1]);
    }
    if (key !== null) headers.push('Authorization', `Bearer ${key}`);

    const forward = http.request({
      agent,
      host: upstream.hostname,
      port: upstream.port,
      method: req.method,
      path: req.url,
      headers,
    });
    forward.on('response', (answer) => {
      res.socket?.setNoDelay(true);
      res.writeHead(answer.statusCode ?? 502, answer.statusMessage, answer.rawHeaders);
      res.flushHeaders();
      answer.on('data', (chunk) => res.write(chunk));
      answer.on('end', () => res.end());
      answer.on('error', () => res.destroy());
    });
    forward.on('error', (error) => {
      if (!res.headersSent) {
        res.writeHead(502, { 'content-type': 'text/plain' });
        res.end(`proxy: ${error.message}\n`);
      } else {
        res.destroy();
      }
    });
    // The client hung up before the answer ended: abort upstream too.
    res.on('close', () => {
      if (!res.writableFinished) forward.destroy();
    });
    req.pipe(forward);
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address();
  return {
    url: `http://127.0.0.1:${port}${upstream.pathname}`,
    close: () => new Promise((resolve) => {
      server.closeAllConnections();
      agent.destroy();
      server.close(() => resolve());
    }),
  };
}
