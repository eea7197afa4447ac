// celgate console: a page over the admin API. It holds no data of its own; the admin token
// lives in this tab's sessionStorage and goes out only as a bearer header to this origin.
// Every value from the gateway is written with textContent, never parsed as HTML (the page's
// Content-Security-Policy requires Trusted Types, so an innerHTML assignment would throw).
"use strict";

const TOKEN = "celgate.adminToken";
const OPERATOR = "celgate.operator";
const REFRESH_MS = 3000;
let timer = null;

const $ = (id) => document.getElementById(id);

function node(tag, text, className) {
  const el = document.createElement(tag);
  if (text !== undefined && text !== null) el.textContent = String(text);
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

function relative(seconds) {
  const delta = Math.round(seconds - Date.now() / 1000);
  const span = Math.abs(delta);
  const text = span < 90 ? `${span} s` : span < 5400 ? `${Math.round(span / 60)} min`
    : `${Math.round(span / 3600)} h`;
  return delta >= 0 ? `in ${text}` : `${text} ago`;
}

class Refused extends Error {}

async function api(method, path, body) {
  const token = sessionStorage.getItem(TOKEN);
  const headers = { Authorization: `Bearer ${token}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const resp = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: "omit",
    cache: "no-store",
    redirect: "error",
  });
  if (resp.status === 401 || resp.status === 403) {
    const detail = await resp.json().catch(() => ({}));
    throw new Refused(detail.detail || `refused (${resp.status})`);
  }
  if (!resp.ok) {
    const detail = await resp.json().catch(() => ({}));
    throw new Error(detail.detail || `${resp.status} ${resp.statusText}`);
  }
  return resp.json();
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
  fact("requested", when(item.created));
  fact("expires", "", "expires");
  article.append(facts);
  article.append(node("pre", JSON.stringify(item.args, null, 2), "args"));
  if (item.args_truncated) {
    article.append(node("p", "Long values are cut where marked [celgate: cut]; the approval "
      + `binds the exact arguments (${item.args_digest}).`, "cut"));
  }
  const actions = node("div", null, "actions");
  const note = node("input", null, "note");
  note.type = "text";
  note.placeholder = "note (shown to the agent on a refusal)";
  note.maxLength = 500;
  const approve = node("button", "Approve", "approve");
  const deny = node("button", "Deny", "deny");
  approve.type = deny.type = "button";
  approve.addEventListener("click", () => decide(item, true, note.value, article));
  deny.addEventListener("click", () => decide(item, false, note.value, article));
  actions.append(note, approve, deny);
  article.append(actions);
  return article;
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
    }
    article.querySelector(".expires").textContent = `${when(item.expires)} (${relative(item.expires)})`;
  }
  for (const article of [...box.children]) {
    if (!seen.has(article.dataset.approvalId)) article.remove();
  }
  $("pending-count").textContent = items.length ? `(${items.length})` : "";
  $("no-pending").hidden = items.length > 0;
}

async function decide(item, approve, note, article) {
  for (const button of article.querySelectorAll("button")) button.disabled = true;
  const verb = approve ? "approve" : "deny";
  const body = { by: sessionStorage.getItem(OPERATOR) || "console", note: note || null };
  try {
    const result = await api("POST", `/admin/approvals/${encodeURIComponent(item.id)}/${verb}`,
      body);
    say(`${result.id} (${item.server}/${item.tool}): ${result.status} by ${result.decided_by}`);
    article.remove();
  } catch (err) {
    for (const button of article.querySelectorAll("button")) button.disabled = false;
    handle(err);
  }
  refresh();
}

// --- the rest of the desk ---

function showDecided(items) {
  const rows = items.filter((r) => r.status !== "pending").slice(0, 20).map((r) => row([
    when(r.decided_at || r.created), r.id, `${r.server}/${r.tool}`, r.grant, r.status,
    r.decided_by || "", r.note || "",
  ]));
  $("decided").tBodies[0].replaceChildren(...rows);
}

function showDecisions(records) {
  const filter = $("filter").value.trim().toLowerCase();
  const rows = [];
  for (const r of records.slice().reverse()) {
    const call = `${r.server || ""}/${r.tool}`;
    const text = `${r.grant} ${call} ${r.effect} ${r.error || ""} ${r.reason}`.toLowerCase();
    if (filter && !text.includes(filter)) continue;
    const effect = node("td", r.error ? `${r.effect} (${r.error})` : r.effect,
      `effect-${r.effect}`);
    rows.push(row([new Date(r.time).toLocaleTimeString(), r.grant, call, effect, r.reason]));
  }
  $("decisions").tBodies[0].replaceChildren(...rows);
}

async function showHealth() {
  const resp = await fetch("/readyz", { credentials: "omit", cache: "no-store" });
  const body = await resp.json();
  const rows = Object.entries(body.upstreams || {}).map(([name, state]) =>
    row([name, node("td", state, state === "up" ? "up" : "down")]));
  $("upstreams").tBodies[0].replaceChildren(...rows);
  const stopped = (body.stopped || []).join(", ");
  $("readiness").textContent = `gateway: ${body.status}` + (stopped ? `; stopped: ${stopped}` : "");
  $("revision").textContent = `policy revision ${body.policy_revision}`;
}

let decisions = [];

async function refresh() {
  try {
    const [pending, all, recent] = await Promise.all([
      api("GET", "/admin/approvals?status=pending"),
      api("GET", "/admin/approvals"),
      api("GET", "/admin/decisions?limit=100"),
    ]);
    showPending(pending);
    showDecided(all);
    decisions = recent;
    showDecisions(decisions);
    await showHealth();
  } catch (err) {
    handle(err);
  }
}

function handle(err) {
  if (err instanceof Refused) {
    signOut(`The gateway refused the admin token: ${err.message}`);
  } else {
    say(`Could not reach the admin API: ${err.message}`, true);
  }
}

// --- signing in and out ---

async function signIn(event) {
  event.preventDefault();
  sessionStorage.setItem(TOKEN, $("token").value);
  sessionStorage.setItem(OPERATOR, $("operator").value.trim());
  $("token").value = "";
  try {
    await api("GET", "/admin/policy");
  } catch (err) {
    if (err instanceof Refused) {
      signOut(`Refused: ${err.message}`);
    } else {
      sessionStorage.removeItem(TOKEN);
      say(`Could not reach the admin API: ${err.message}`, true);
    }
    return;
  }
  say("");
  enter();
}

function enter() {
  $("login").hidden = true;
  $("desk").hidden = false;
  $("sign-out").hidden = false;
  refresh();
  clearInterval(timer);
  timer = setInterval(refresh, REFRESH_MS);
}

function signOut(message) {
  clearInterval(timer);
  sessionStorage.removeItem(TOKEN);
  $("pending").replaceChildren();
  $("desk").hidden = true;
  $("sign-out").hidden = true;
  $("login").hidden = false;
  say(message || "", Boolean(message));
}

document.addEventListener("DOMContentLoaded", () => {
  $("login-form").addEventListener("submit", signIn);
  $("sign-out").addEventListener("click", () => signOut(""));
  $("filter").addEventListener("input", () => showDecisions(decisions));
  if (sessionStorage.getItem(TOKEN)) enter();
});
