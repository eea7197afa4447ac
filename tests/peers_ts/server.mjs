// An MCP server written with the TypeScript SDK, served over Streamable HTTP (sessions, SSE
// answers) on 127.0.0.1, as an upstream for the gateway's tests. Every tools/call that runs is
// written to $UPSTREAM_CALL_LOG as one JSON line.
//
//   node server.mjs <sdk-dir> <port>
import { appendFileSync } from "node:fs";
import { createServer } from "node:http";
import { randomUUID } from "node:crypto";
import { pathToFileURL } from "node:url";

const [sdkDir, port] = process.argv.slice(2);
const load = (p) => import(pathToFileURL(`${sdkDir}/node_modules/${p}`).href);
const { McpServer } = await load("@modelcontextprotocol/sdk/dist/esm/server/mcp.js");
const { StreamableHTTPServerTransport } = await load(
  "@modelcontextprotocol/sdk/dist/esm/server/streamableHttp.js",
);
const { z } = await load("zod/index.js");

function record(tool, args) {
  const path = process.env.UPSTREAM_CALL_LOG;
  if (path) appendFileSync(path, JSON.stringify({ tool, arguments: args, pid: process.pid }) + "\n");
}

function build() {
  const server = new McpServer({ name: "ts-upstream", version: "1.0.0" });
  const text = (t) => ({ content: [{ type: "text", text: t }] });
  server.registerTool(
    "echo",
    { description: "Echoes the text back", inputSchema: { text: z.string() } },
    async ({ text: t }) => (record("echo", { text: t }), text(t)),
  );
  server.registerTool(
    "add",
    {
      description: "Adds two numbers",
      inputSchema: { a: z.number(), b: z.number() },
      outputSchema: { result: z.number() },
    },
    async ({ a, b }) => {
      record("add", { a, b });
      return { ...text(String(a + b)), structuredContent: { result: a + b } };
    },
  );
  for (const name of ["delete_item", "write_file", "calls_seen"]) {
    server.registerTool(
      name,
      { description: `${name} (ts)`, inputSchema: { id: z.string().optional() } },
      async (args) => (record(name, args), text(`${name} ran`)),
    );
  }
  return server;
}

const transports = new Map();
createServer(async (req, res) => {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  const raw = Buffer.concat(chunks).toString("utf8");
  let body;
  try {
    body = raw ? JSON.parse(raw) : undefined;
  } catch {
    res.writeHead(400).end();
    return;
  }
  const sid = req.headers["mcp-session-id"];
  let transport = sid ? transports.get(sid) : undefined;
  if (!transport) {
    if (sid || req.method !== "POST" || body?.method !== "initialize") {
      res.writeHead(sid ? 404 : 400, { "content-type": "application/json" });
      res.end(JSON.stringify({ jsonrpc: "2.0", id: null, error: { code: -32000, message: "no session" } }));
      return;
    }
    transport = new StreamableHTTPServerTransport({
      sessionIdGenerator: () => randomUUID(),
      onsessioninitialized: (id) => transports.set(id, transport),
    });
    transport.onclose = () => transport.sessionId && transports.delete(transport.sessionId);
    await build().connect(transport);
  }
  await transport.handleRequest(req, res, body);
}).listen(Number(port), "127.0.0.1");
