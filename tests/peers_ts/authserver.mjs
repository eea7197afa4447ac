// A real authorization server for the OAuth tests: oauth2-mock-server (npm), which signs RS256
// JWTs with a key pair it generates and serves its JWKS and OpenID metadata. Run as
//   node authserver.mjs <prefix where oauth2-mock-server is installed> <port> '<clients json>'
// clients: {"<client_id>": {"roles": [...], "scope": "..."}}; the token's aud is the RFC 8707
// `resource` of the request, as a real server supporting resource indicators mints it.
//
// Test controls beside the server's own endpoints (the library has no key removal, so a
// rotation is a new issuer object at the same URL, with a new key):
//   POST /_rotate            the signing key is replaced (kid k1 -> k2 -> ...)
//   GET  /_stats             {"jwks": n, "metadata": n, "introspect": n} requests served so far
//   POST /_token             a token for {"client", "ttl", "iss", "resource", "sub"} (json body)
//   POST /_opaque            an opaque token for {"client", "resource", "ttl"}, for introspection
//   POST /introspect         RFC 7662 over the opaque tokens issued here (basic auth required)
import http from "node:http";
import { randomBytes } from "node:crypto";
import path from "node:path";

const [prefix, portArg, clientsArg] = process.argv.slice(2);
const lib = await import(
  path.join(prefix, "node_modules", "oauth2-mock-server", "dist", "index.mjs")
);
const { OAuth2Issuer, OAuth2Service, Events } = lib;
const clients = JSON.parse(clientsArg || "{}");
const port = Number(portArg);
const url = `http://127.0.0.1:${port}`;
const stats = { jwks: 0, metadata: 0, introspect: 0 };
const opaque = new Map();
let generation = 0;
let service;

function clientOf(req, body) {
  const header = req.headers.authorization || "";
  if (header.startsWith("Basic ")) {
    return Buffer.from(header.slice(6), "base64").toString().split(":")[0];
  }
  return body.client_id || body.client;
}

function claimsFor(client) {
  const entry = clients[client] || {};
  const out = { sub: client, client_id: client };
  if (entry.roles) out.roles = entry.roles;
  if (entry.team) out.team = entry.team;
  if (entry.scope !== undefined) out.scope = entry.scope;
  return out;
}

async function newService() {
  generation += 1;
  const issuer = new OAuth2Issuer();
  issuer.url = url;
  await issuer.keys.generate("RS256", { kid: `k${generation}` });
  const svc = new OAuth2Service(issuer);
  svc.on(Events.BeforeTokenSigning, (token, req) => {
    const body = req.body || {};
    if (body.scope) token.payload.scope = body.scope; // a client's own scope below wins
    Object.assign(token.payload, claimsFor(clientOf(req, body)));
    if (body.resource) token.payload.aud = body.resource;
    if (body.ttl !== undefined) token.payload.exp = token.payload.iat + Number(body.ttl);
    if (body.iss) token.payload.iss = body.iss;
    if (body.sub) token.payload.sub = body.sub; // a user of the client, for /_token only
  });
  return svc;
}

function readJson(req) {
  return new Promise((resolve) => {
    const chunks = [];
    req.on("data", (c) => chunks.push(c));
    req.on("end", () => {
      const text = Buffer.concat(chunks).toString();
      const type = req.headers["content-type"] || "";
      if (type.includes("json")) resolve(text ? JSON.parse(text) : {});
      else resolve(Object.fromEntries(new URLSearchParams(text)));
    });
  });
}

function send(res, status, body) {
  res.writeHead(status, { "content-type": "application/json" });
  res.end(JSON.stringify(body));
}

async function control(req, res, pathname) {
  if (pathname === "/_rotate") {
    service = await newService();
    return send(res, 200, { kid: `k${generation}` });
  }
  if (pathname === "/_stats") return send(res, 200, stats);
  const body = await readJson(req);
  if (pathname === "/_token") {
    // The service's own buildToken: the same signing hook as a token request.
    const fake = { headers: {}, body: { ...body, client_id: body.client } };
    const token = await service.buildToken(fake, 3600);
    return send(res, 200, { access_token: token });
  }
  if (pathname === "/_opaque") {
    const token = randomBytes(24).toString("hex");
    const now = Math.floor(Date.now() / 1000);
    const claims = { ...claimsFor(body.client), iss: url, aud: body.resource };
    claims.exp = now + Number(body.ttl ?? 3600);
    opaque.set(token, claims);
    return send(res, 200, { access_token: token });
  }
  if (pathname === "/introspect") {
    stats.introspect += 1;
    if (!(req.headers.authorization || "").startsWith("Basic ")) {
      return send(res, 401, { error: "invalid_client" });
    }
    const claims = opaque.get(body.token);
    const now = Math.floor(Date.now() / 1000);
    if (!claims || claims.exp <= now) return send(res, 200, { active: false });
    return send(res, 200, { active: true, ...claims });
  }
  return false;
}

service = await newService();
const server = http.createServer(async (req, res) => {
  const pathname = new URL(req.url, url).pathname;
  if (pathname === "/jwks") stats.jwks += 1;
  if (pathname.startsWith("/.well-known/")) stats.metadata += 1;
  if (pathname.startsWith("/_") || pathname === "/introspect") {
    try {
      if ((await control(req, res, pathname)) !== false) return;
    } catch (err) {
      return send(res, 500, { error: String(err) });
    }
    return send(res, 404, {});
  }
  service.requestHandler(req, res);
});
server.listen(port, "127.0.0.1", () => {
  process.stdout.write(`authserver ${url}\n`);
});
for (const signal of ["SIGTERM", "SIGINT"]) {
  process.on(signal, () => server.close(() => process.exit(0)));
}
