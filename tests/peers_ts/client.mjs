// The TypeScript SDK's client, as hosts use it, driven by the tests: connect to a URL (with an
// optional bearer key), list tools, then make each call given, and print one JSON line with
// what the SDK handed back (a result, or the error it raised instead).
//
//   node client.mjs <sdk-dir> <url> <key|-> '[{"name": "echo", "arguments": {"text": "hi"}}]' [elicit]
//
// With a fifth argument (accept, reject, decline or cancel) the client declares elicitation
// and answers every elicitation/create so: accept sends {approve: true}, reject accepts the
// form with {approve: false}; the questions asked are printed as "elicited". With
// LIST_RESOURCES set it lists resources too ("resources": their names).
import { pathToFileURL } from "node:url";

const [sdkDir, url, key, callsJson, elicit] = process.argv.slice(2);
const sdk = (p) => import(pathToFileURL(`${sdkDir}/node_modules/@modelcontextprotocol/sdk/dist/esm/${p}`).href);
const { Client } = await sdk("client/index.js");
const { StreamableHTTPClientTransport } = await sdk("client/streamableHttp.js");
const { ElicitRequestSchema } = await sdk("types.js");

const headers = key && key !== "-" ? { Authorization: `Bearer ${key}` } : {};
const transport = new StreamableHTTPClientTransport(new URL(url), { requestInit: { headers } });
const capabilities = elicit ? { elicitation: { form: {} } } : {};
const client = new Client({ name: "celgate-tests-ts", version: "1.0.0" }, { capabilities });
const out = { tools: null, calls: [], elicited: [] };
if (elicit) {
  client.setRequestHandler(ElicitRequestSchema, async (request) => {
    out.elicited.push(request.params.message);
    if (elicit === "accept" || elicit === "reject") {
      return { action: "accept", content: { approve: elicit === "accept" } };
    }
    return { action: elicit };
  });
}
try {
  await client.connect(transport);
  out.protocolVersion = transport.protocolVersion ?? null;
  const listed = await client.listTools();
  out.tools = listed.tools.map((t) => t.name);
  if (process.env.LIST_RESOURCES) {
    out.resources = (await client.listResources()).resources.map((r) => r.name);
  }
  for (const call of JSON.parse(callsJson || "[]")) {
    try {
      const result = await client.callTool({ name: call.name, arguments: call.arguments ?? {} });
      out.calls.push({ result });
    } catch (err) {
      out.calls.push({ error: { code: err.code ?? null, message: String(err.message ?? err) } });
    }
  }
} catch (err) {
  out.fatal = String(err && err.message ? err.message : err);
} finally {
  await client.close().catch(() => {});
}
process.stdout.write(JSON.stringify(out) + "\n");
