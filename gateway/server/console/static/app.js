// celgate console: a page over the admin API. The admin token is posted once to
// /console/login; from then on the browser holds an HttpOnly session cookie, and this script
// the session's CSRF token, sent with every request, reads included. The token is kept in this
// tab's sessionStorage (so a reload keeps the session), which belongs to this page's origin
// alone: the browser sends the cookie to every port of the host, never the token. Every value
// from the gateway is written with textContent, never parsed as HTML (the page's
// Content-Security-Policy requires Trusted Types, so an innerHTML assignment would throw).
"use strict";

const REFRESH_MS = 3000;
const PENDING_SHOWN = 200; // cards on the desk at most (those expiring soonest)
const MAX_ROWS = 200; // live decisions kept on the page
let session = null; // {operator, csrf, expires}
const KEPT = "celgate-console-csrf"; // sessionStorage key of the session's CSRF token
let timer = null;
let stream = null;
let tab = "approvals";
// Counts sign-ins and sign-outs: an answer asked for under an older one is not drawn (a
// listing that came back after sign-out wrote held calls' arguments back into the page).
let epoch = 0;

const $ = (id) => document.getElementById(id);

// Characters that draw nothing or reorder what follows them: controls (tab and newline aside),
// bidi embeddings, overrides and isolates, zero-width and other invisible format characters,
// tag characters. A value holding one could show the approver another call than the one held
// ("ls /tmp/cache\u202e; rm -rf ~ #" reads as a harmless ls), so each is shown as its escape.
// Beside the list, every format character (Cf: Arabic number signs, Egyptian hieroglyph
// controls...) and every default-ignorable one (the combining grapheme joiner, Mongolian
// variation selectors, musical symbol formatting...): "staging\u034f-db" drew as staging-db.
const HIDDEN = /[\u0000-\u0008\u000b-\u001f\u007f-\u009f\u00ad\u061c\u115f\u1160\u17b4\u17b5\u180e\u200b-\u200f\u2028-\u202e\u2060-\u206f\u3164\ufe00-\ufe0f\ufeff\uffa0\ufff9-\ufffb\u{e0000}-\u{e0fff}\p{Cf}\p{Default_Ignorable_Code_Point}]/gu;

function shown(text) {
  return String(text).replace(HIDDEN, (c) => {
    const hex = c.codePointAt(0).toString(16).padStart(4, "0");
    return hex.length > 4 ? `\\u{${hex}}` : `\\u${hex}`;
  });
}

function node(tag, text, className) {
  const el = document.createElement(tag);
  if (text !== undefined && text !== null) el.textContent = shown(text);
  if (className) el.className = className;
  return el;
}

function row(cells) {
  const tr = document.createElement("tr");
  for (const cell of cells) tr.append(cell instanceof Node ? cell : node("td", cell));
  return tr;
}

function say(message, isError) {
  const status = $("status");
  status.textContent = message || "";
  status.className = isError ? "error" : "";
}

function when(seconds) {
  return new Date(seconds * 1000).toLocaleString();
}

function span(seconds) {
  const s = Math.abs(Math.round(seconds));
  if (s < 90) return `${s} s`;
  if (s < 5400) return `${Math.round(s / 60)} min`;
  return `${Math.round(s / 3600)} h`;
}

function relative(seconds) {
  const delta = seconds - Date.now() / 1000;
  return delta >= 0 ? `in ${span(delta)}` : `${span(delta)} ago`;
}

class Refused extends Error {}

async function call(method, path, body) {
  const headers = {};
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const token = session ? session.csrf : sessionStorage.getItem(KEPT);
  if (token) headers["X-CSRF-Token"] = token;
  const resp = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: "same-origin",
    cache: "no-store",
    redirect: "error",
  });
  const detail = await resp.clone().json().catch(() => ({}));
  if (resp.status === 401) throw new Refused(detail.detail || "refused (401)");
  // The session's token no longer matches (a sign-in in another tab replaced the session):
  // signed out here too, not a desk whose every request fails.
  if (resp.status === 403 && /CSRF token/.test(detail.detail || "")) {
    throw new Refused(detail.detail);
  }
  if (!resp.ok) throw new Error(detail.detail || `${resp.status} ${resp.statusText}`);
  const out = await resp.json();
  const total = resp.headers.get("x-total-count");
  if (Array.isArray(out) && total !== null) out.total = Number(total);
  return out;
}

// --- pending approvals: cards kept by id, so a note being typed survives a refresh ---

function card(item) {
  const article = node("article", null, "approval");
  article.dataset.approvalId = item.id;
  article.append(node("h3", `${item.server}/${item.tool}`));
  const facts = document.createElement("dl");
  const fact = (name, value, className) => {
    facts.append(node("dt", name));
    facts.append(node("dd", value, className));
  };
  fact("approval", item.id);
  fact("grant", item.grant);
  fact("agent", item.agent);
  fact("rule", `${item.rule}: ${item.reason}`);
  // Every top-level argument named up front: the box below shows them all (it has no
  // height of its own, so none is scrolled out of sight under Approve), but an agent picks
  // their order, and three long harmless ones first pushed "path": "/" far down.
  const names = item.arg_names ?? (item.args && typeof item.args === "object"
    && !Array.isArray(item.args) ? Object.keys(item.args) : null);
  if (names) fact("arguments", names.length ? names.join(", ") : "(none)", "arg-names");
  fact("requested", "", "age");
  fact("expires", "", "expires");
  article.append(facts);
  // The server's text: JSON.parse would round integers past 2**53 (two calls would look alike)
  const args = item.args_text ?? JSON.stringify(item.args, null, 2);
  article.append(node("pre", args, "args"));
  if (item.args_truncated) {
    article.append(node("p", "Long values are cut where marked [celgate: cut]; the approval "
      + `binds the exact arguments (${item.args_digest}).`, "cut"));
  }
  if (args.includes("[celgate: secret]")) {
    article.append(node("p", "Fields the policy marks secret are masked; the approval binds "
      + "their real values.", "cut"));
  }
  const actions = node("div", null, "actions");
  const note = node("input", null, "note");
  note.type = "text";
  note.placeholder = "note (recorded; shown to the agent on a refusal)";
  note.maxLength = 500;
  const approve = node("button", "Approve", "approve");
  const deny = node("button", "Deny", "deny");
  approve.type = deny.type = "button";
  approve.addEventListener("click", () => steady() && decide(item, true, note.value, article));
  deny.addEventListener("click", () => steady() && decide(item, false, note.value, article));
  actions.append(note, approve, deny);
  article.append(actions);
  return article;
}

// A card never moves under the operator's pointer: one that leaves the desk (decided here or
// elsewhere, expired, withdrawn by its agent) stays where it is, settled, until dismissed; a
// click just after the desk changed is not taken (a card removed at once let the one below
// slide under a click meant for it: a harmless call's "Approve" approved the next one).
let changedAt = 0;
let deskShown = false; // the desk's first render is no change under a pointer
const STEADY_MS = 700;

function steady() {
  return Date.now() - changedAt >= STEADY_MS;
}

function settle(article, text) {
  if (article.classList.contains("settled")) return;
  article.classList.add("settled");
  changedAt = Date.now();
  const actions = article.querySelector(".actions");
  const dismiss = node("button", "Dismiss", "dismiss");
  dismiss.type = "button";
  dismiss.addEventListener("click", () => {
    changedAt = Date.now();
    article.remove();
  });
  // as tall as it was: a card settled above another must not move that one under the pointer
  actions.style.minHeight = `${actions.getBoundingClientRect().height}px`;
  actions.replaceChildren(node("span", text, "settled-note"), dismiss);
}

function showPending(items) {
  const box = $("pending");
  const seen = new Set();
  for (const item of items) {
    seen.add(item.id);
    let article = box.querySelector(`article[data-approval-id="${CSS.escape(item.id)}"]`);
    if (!article) {
      article = card(item);
      box.append(article);
      if (deskShown) changedAt = Date.now();
    }
    article.querySelector(".age").textContent =
      `${when(item.created)} (${span(Date.now() / 1000 - item.created)} ago)`;
    article.querySelector(".expires").textContent =
      `${when(item.expires)} (${relative(item.expires)})`;
  }
  for (const article of [...box.children]) {
    if (!seen.has(article.dataset.approvalId)) {
      settle(article, "no longer pending: decided elsewhere, expired or withdrawn");
    }
  }
  deskShown = true;
  const total = items.total ?? items.length;
  $("pending-count").textContent = total > items.length
    ? `(${total}: the ${items.length} expiring soonest shown; the rest as these are decided `
      + "or expire)"
    : items.length ? `(${items.length})` : "";
  $("no-pending").hidden = items.length > 0;
}

async function decide(item, approve, note, article) {
  for (const button of article.querySelectorAll("button")) button.disabled = true;
  const verb = approve ? "approve" : "deny";
  try {
    const result = await call("POST",
      `/admin/approvals/${encodeURIComponent(item.id)}/${verb}`, { note: note || null });
    say(`${result.id} (${item.server}/${item.tool}): ${result.status} by ${result.decided_by}`);
    settle(article, `${result.status} by ${result.decided_by}`);
  } catch (err) {
    for (const button of article.querySelectorAll("button")) button.disabled = false;
    handle(err);
  }
  refresh();
}

function showDecided(items) {
  const rows = items.filter((r) => r.status !== "pending").slice(0, 20).map((r) => row([
    when(r.decided_at || r.created), r.id, `${r.server}/${r.tool}`, r.grant, r.status,
    r.decided_by || "", r.note || "",
  ]));
  $("decided").tBodies[0].replaceChildren(...rows);
}

// --- live decisions: server-sent events, filtered by the gateway ---

function decisionRow(r) {
  const effect = node("td", r.error ? `${r.effect} (${r.error})` : r.effect,
    `effect-${r.effect}`);
  // What a rule in shadow mode would have done: the point of trying one on live traffic.
  const shadows = (r.shadow || []).map((s) =>
    `shadow ${s.rule}: would ${s.would_effect}${s.error ? ` (${s.error})` : ""}`);
  const reason = shadows.length
    ? node("td", [r.reason, ...shadows].join("\n"), "shadowed") : r.reason;
  const tr = row([new Date(r.time).toLocaleTimeString(), r.grant, `${r.server || ""}/${r.tool}`,
    effect, r.rule, reason]);
  tr.dataset.decisionId = r.decision_id;
  return tr;
}

function openStream() {
  closeStream();
  const query = new URLSearchParams();
  for (const [name, id] of [["grant", "f-grant"], ["tool", "f-tool"], ["effect", "f-effect"]]) {
    const value = $(id).value.trim();
    if (value) query.set(name, value);
  }
  $("decisions").tBodies[0].replaceChildren();
  query.set("csrf", session.csrf); // an EventSource sends no header of the page's
  stream = new EventSource(`/console/events?${query}`);
  stream.addEventListener("open", () => { $("stream-state").textContent = "(live)"; });
  stream.addEventListener("error", () => { $("stream-state").textContent = "(reconnecting)"; });
  stream.addEventListener("decision", (event) => {
    const body = $("decisions").tBodies[0];
    body.prepend(decisionRow(JSON.parse(event.data)));
    while (body.rows.length > MAX_ROWS) body.lastElementChild.remove();
  });
  stream.addEventListener("gap", (event) => {
    const missed = JSON.parse(event.data).dropped;
    $("decisions").tBodies[0].prepend(row([node("td", `${missed} decisions not shown (this page `
      + "fell behind)", "cut")]));
  });
  stream.addEventListener("signed-out", () => signOut("The console session ended."));
}

function closeStream() {
  if (stream) stream.close();
  stream = null;
  $("stream-state").textContent = "";
}

// --- upstreams, policy, limits, tools ---

async function showHealth(asked) {
  if (!session || asked !== epoch) return; // signed out while a refresh was under way
  const body = await call("GET", "/admin/health");
  if (asked !== epoch) return;
  const details = body.upstream_health || {};
  const rows = Object.entries(body.upstreams || {}).map(([name, state]) => {
    const d = details[name] || {};
    return row([name, node("td", state, state === "up" ? "up" : "down"),
      d.transport === "stdio" ? `stdio: ${d.command}` : (d.url || ""), d.error || "",
      d.since ? relative(d.since) : ""]);
  });
  $("upstreams").tBodies[0].replaceChildren(...rows);
  const stopped = (body.stopped || []).join(", ");
  $("readiness").textContent = `gateway: ${body.status}` + (stopped ? `; stopped: ${stopped}` : "");
  $("revision").textContent = `policy revision ${body.policy_revision}`;
}

function showPolicy(policy) {
  const facts = [["revision", policy.revision], ["sources", policy.sources.join(", ")],
    ["default", policy.default], ["entries", String(policy.entries.length)]];
  const last = policy.last_reload;
  const reload = last ? `${last.ok ? "loaded" : "refused"} (${last.why}, ${relative(last.at)})`
    : "none since start";
  facts.push(["last reload", reload]);
  const list = $("policy");
  list.replaceChildren();
  for (const [name, value] of facts) {
    list.append(node("dt", name));
    list.append(node("dd", value, name === "last reload" && last && !last.ok ? "down" : ""));
  }
  $("reload-problems").replaceChildren(...(last ? last.problems : []).map((p) => node("li", p)));
  // Loaded, but matching nothing (an entry naming a server this gateway does not serve).
  $("policy-warnings").replaceChildren(...(policy.warnings || []).map((w) => node("li", w)));
}

function showCounters(counters) {
  const rows = counters.map((c) => {
    const buckets = c.buckets.length
      ? c.buckets.map((b) => `${b.key}: ${b.remaining}`).join("\n")
      : "all full";
    return row([c.counter, `${c.max} per ${c.window} s`, c.scope, c.entries.join(", "),
      node("td", buckets, "buckets")]);
  });
  $("counters").tBodies[0].replaceChildren(...rows);
}

function showTools(tools) {
  const rows = tools.map((t) => row([t.server, t.tool, t.kind, node("td", t.risk, `risk-${t.risk}`),
    t.why, node("td", t.pin, t.pin === "changed" ? "down" : "")]));
  $("tools").tBodies[0].replaceChildren(...rows);
}

async function refresh() {
  const asked = epoch;
  try {
    if (!session) return;
    if (tab === "approvals") {
      // The pending with their arguments as text alone (the page never parses them), the
      // decided without: a desk of 1,000 held calls was 34 MB a listing, twice, every 3 s.
      const [pending, decided] = await Promise.all([
        call("GET", "/admin/approvals?status=pending&args=text&order=expiring"
          + `&limit=${PENDING_SHOWN}`),
        call("GET", "/admin/approvals?status=decided&args=none&limit=20"),
      ]);
      if (asked !== epoch) return;
      showPending(pending);
      showDecided(decided);
    } else if (tab === "system") {
      const [policy, counters] = await Promise.all([
        call("GET", "/admin/policy"), call("GET", "/admin/counters"),
      ]);
      if (asked !== epoch) return;
      showPolicy(policy);
      showCounters(counters);
    } else if (tab === "tools") {
      const tools = await call("GET", "/admin/tools");
      if (asked !== epoch) return;
      showTools(tools);
    }
    await showHealth(asked);
  } catch (err) {
    if (asked === epoch) handle(err);
  }
}

// One round of listings at a time: a slow answer (a long desk) does not pile more up behind
// it every REFRESH_MS.
let polling = false;
async function poll() {
  if (polling) return;
  polling = true;
  try {
    await refresh();
  } finally {
    polling = false;
  }
}

function handle(err) {
  if (err instanceof Refused) {
    signOut(`Signed out: ${err.message}`);
  } else {
    say(`Could not reach the admin API: ${err.message}`, true);
  }
}

function show(name) {
  tab = name;
  for (const button of $("tabs").querySelectorAll("button")) {
    button.setAttribute("aria-pressed", String(button.dataset.tab === name));
  }
  for (const panel of document.querySelectorAll("[data-panel]")) {
    panel.hidden = panel.dataset.panel !== name;
  }
  if (name === "decisions") openStream(); else closeStream();
  refresh();
}

// --- signing in and out ---

async function signIn(event) {
  event.preventDefault();
  const body = { token: $("token").value, operator: $("operator").value.trim() };
  $("token").value = "";
  try {
    session = await call("POST", "/console/login", body);
    sessionStorage.setItem(KEPT, session.csrf);
  } catch (err) {
    session = null;
    say(err instanceof Refused ? `Refused: ${err.message}` : `Could not sign in: ${err.message}`,
      true);
    return;
  }
  say("");
  enter();
}

function enter() {
  epoch += 1;
  $("login").hidden = true;
  $("desk").hidden = false;
  $("tabs").hidden = false;
  $("sign-out").hidden = false;
  $("who").textContent = `signed in as ${session.operator}`;
  show(tab);
  clearInterval(timer);
  timer = setInterval(poll, REFRESH_MS);
}

function signOut(message) {
  epoch += 1;
  clearInterval(timer);
  closeStream();
  session = null;
  sessionStorage.removeItem(KEPT);
  forget();
  $("desk").hidden = true;
  $("tabs").hidden = true;
  $("sign-out").hidden = true;
  $("who").textContent = "";
  $("login").hidden = false;
  say(message || "", Boolean(message));
}

// Everything the desk was shown goes with the session: a signed-out page kept the live
// decisions, upstreams, policy, counters and tools, readable in its DOM (red-team wave 62).
function forget() {
  $("pending").replaceChildren();
  $("pending-count").textContent = "";
  for (const id of ["decided", "decisions", "upstreams", "counters", "tools"]) {
    $(id).tBodies[0].replaceChildren();
  }
  for (const id of ["policy", "reload-problems", "policy-warnings"]) $(id).replaceChildren();
  for (const id of ["readiness", "revision", "stream-state"]) $(id).textContent = "";
  deskShown = false;
}

async function logOut() {
  try {
    await call("POST", "/console/logout");
  } catch (err) {
    // the session may have ended already; either way this page forgets it
  }
  signOut("");
}

document.addEventListener("DOMContentLoaded", async () => {
  $("login-form").addEventListener("submit", signIn);
  $("sign-out").addEventListener("click", logOut);
  $("stream-filter").addEventListener("submit", (event) => {
    event.preventDefault();
    openStream();
  });
  for (const button of $("tabs").querySelectorAll("button")) {
    button.addEventListener("click", () => show(button.dataset.tab));
  }
  try {
    const current = await call("GET", "/console/session");
    if (current.signed_in) {
      session = { ...current, csrf: sessionStorage.getItem(KEPT) };
      enter();
    }
  } catch (err) {
    say(`Could not reach the gateway: ${err.message}`, true);
  }
});
