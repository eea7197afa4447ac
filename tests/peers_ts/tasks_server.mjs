// A stateless MCP server with tasks (the TypeScript SDK's experimental task support), served
// over Streamable HTTP on 127.0.0.1, as an upstream for the gateway's tests. With no session,
// every caller shares its one task store, as every agent behind a gateway shares the gateway's
// connection: tasks/list shows every task, and any task id is enough to read its result.
//
//   node tasks_server.mjs <sdk-dir> <port>
import { createServer } from "node:http";
import { pathToFileURL } from "node:url";

const [sdkDir, port] = process.argv.slice(2);
const load = (p) => import(pathToFileURL(`${sdkDir}/node_modules/${p}`).href);
const { McpServer } = await load("@modelcontextprotocol/sdk/dist/esm/server/mcp.js");
const { StreamableHTTPServerTransport } = await load(
  "@modelcontextprotocol/sdk/dist/esm/server/streamableHttp.js",
);
const { InMemoryTaskStore, InMemoryTaskMessageQueue } = await load(
  "@modelcontextprotocol/sdk/dist/esm/experimental/tasks/stores/in-memory.js",
);
const { z } = await load("zod/index.js");

const taskStore = new InMemoryTaskStore();
const taskMessageQueue = new InMemoryTaskMessageQueue();

function build() {
  const server = new McpServer(
    { name: "ts-tasks", version: "1.0.0" },
    {
      capabilities: { tasks: { list: {}, cancel: {}, requests: { tools: { call: {} } } } },
      taskStore,
      taskMessageQueue,
    },
  );
  // A task whose result holds what its caller gave: another caller must never read it.
  server.experimental.tasks.registerToolTask(
    "keep",
    { description: "Keeps a note as a task's result", inputSchema: { note: z.string() } },
    {
      async createTask({ note }, { taskStore: store, taskRequestedTtl }) {
        const task = await store.createTask({ ttl: taskRequestedTtl ?? 60000 });
        await store.storeTaskResult(task.taskId, "completed", {
          content: [{ type: "text", text: `note: ${note}` }],
        });
        return { task };
      },
      async getTask(_args, { taskId, taskStore: store }) {
        return await store.getTask(taskId);
      },
      async getTaskResult(_args, { taskId, taskStore: store }) {
        return await store.getTaskResult(taskId);
      },
    },
  );
  return server;
}

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
  const transport = new StreamableHTTPServerTransport({
    sessionIdGenerator: undefined,
    enableJsonResponse: true,
  });
  res.on("close", () => transport.close());
  await build().connect(transport);
  await transport.handleRequest(req, res, body);
}).listen(Number(port), "127.0.0.1");
