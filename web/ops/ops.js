// The ops dashboard: watch sessions live and act on them (hang up, tool kill switch).
//
// Talks only to this broker's ops API with the operator's API key, which lives in this tab's
// sessionStorage (never localStorage, never a URL). Everything the server sends is shown with
// textContent: event payloads are partly written by browsers and must never become markup.
// The event stream is read with fetch() because EventSource cannot send an Authorization
// header; the SSE parsing and the Last-Event-ID resume are done here.

const API = "/api/v1";
const KEY_STORAGE = "sideband-broker.ops.api-key";
const LIST_POLL_MS = 2000;
const DETAIL_POLL_MS = 3000;
const DETAIL_DEBOUNCE_MS = 250;
const PAGE_SIZE = 50;
const MAX_LIMIT = 200; // the list API's largest page
const MAX_TIMELINE = 1500; // events kept on the page; older ones are dropped from view
const AUDIT_PAGE = 500; // the audit API's largest page
const MAX_AUDIT = 2000; // audit records shown on a session's page (its newest are the API's)
const RUNNING = new Set(["live", "degraded"]);
const ENDED = new Set(["ended", "failed"]);
const STATES = ["created", "offered", "live", "degraded", "ended", "failed"];
const OUTCOMES = ["succeeded", "failed", "denied", "cancelled", "running", "held", "pending"];
const TRANSCRIPTION_EVENTS = "conversation.item.input_audio_transcription.";

const $ = (id) => document.getElementById(id);
const ui = {
  error: $("error"),
  keyView: $("key-view"),
  keyForm: $("key-form"),
  keyInput: $("key-input"),
  keyStatus: $("key-status"),
  keyHint: $("key-hint"),
  forgetKey: $("forget-key"),
  sessionsView: $("sessions-view"),
  stateFilter: $("state-filter"),
  refreshed: $("refreshed"),
  counts: $("counts"),
  usage: $("usage"),
  sessions: $("sessions"),
  sessionsEmpty: $("sessions-empty"),
  loadMore: $("load-more"),
  sessionView: $("session-view"),
  sessionId: $("session-id"),
  sessionState: $("session-state"),
  sessionModel: $("session-model"),
  sessionSideband: $("session-sideband"),
  sessionCreated: $("session-created"),
  sessionCall: $("session-call"),
  sessionEndReason: $("session-end-reason"),
  sessionAuditLink: $("session-audit-link"),
  hangup: $("hangup"),
  transfer: $("transfer"),
  sessionPhone: $("session-phone"),
  sessionPhoneFacts: $("session-phone-facts"),
  sessionLine: $("session-line"),
  sessionCaller: $("session-caller"),
  actionError: $("action-error"),
  hideDeltas: $("hide-deltas"),
  streamStatus: $("stream-status"),
  timeline: $("timeline"),
  toolCalls: $("tool-calls"),
  toolCallsEmpty: $("tool-calls-empty"),
  toolSwitches: $("tool-switches"),
  transcript: $("transcript"),
  transcriptEmpty: $("transcript-empty"),
  auditCard: $("audit-card"),
  auditCount: $("audit-count"),
  auditRecords: $("audit-records"),
  auditEmpty: $("audit-empty"),
  auditError: $("audit-error"),
  approvalsCard: $("approvals-card"),
  approvals: $("approvals"),
  approvalError: $("approval-error"),
};

// ---------------------------------------------------------------- small helpers

/** An element with text content only (never innerHTML); `props` sets class, data-*, attrs. */
function h(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = String(value);
    else if (name === "data") {
      for (const [key, item] of Object.entries(value)) if (item !== undefined) node.dataset[key] = String(item);
    }
    else node.setAttribute(name, String(value));
  }
  node.append(...children.filter((c) => c !== null && c !== undefined));
  return node;
}

function clip(text, max = 180) {
  const value = String(text ?? "");
  return value.length <= max ? value : value.slice(0, max - 1) + "…";
}

const pad = (n, width = 2) => String(n).padStart(width, "0");

function clock(iso) {
  if (!iso) return "—";
  const t = new Date(iso);
  if (Number.isNaN(t.getTime())) return String(iso);
  return `${pad(t.getHours())}:${pad(t.getMinutes())}:${pad(t.getSeconds())}.${pad(t.getMilliseconds(), 3)}`;
}

function duration(seconds) {
  const s = Math.max(0, Math.floor(seconds));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${pad(s % 60)} s`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ${pad(Math.floor(s / 60) % 60)} min`;
  return `${Math.floor(s / 86400)} d ${Math.floor(s / 3600) % 24} h`;
}

function ago(iso) {
  if (!iso) return "—";
  const seconds = (Date.now() - new Date(iso).getTime()) / 1000;
  return seconds < 1 ? "just now" : `${duration(seconds)} ago`;
}

/** JSON text pretty-printed when it parses; anything else as it came. */
function pretty(value) {
  if (value === null || value === undefined) return "";
  if (typeof value !== "string") return JSON.stringify(value, null, 2);
  try {
    return JSON.stringify(JSON.parse(value), null, 2);
  } catch {
    return value;
  }
}

function sleep(ms, signal) {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal?.addEventListener("abort", () => {
      clearTimeout(timer);
      resolve();
    });
  });
}

// ---------------------------------------------------------------- the API

class ApiError extends Error {
  constructor(status, problem) {
    const code = problem?.code || (status ? `http_${status}` : "network_error");
    const detail = problem?.detail || problem?.title || "no details";
    super(status ? `${status} ${code}: ${detail}` : `${code}: ${detail}`);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
    this.detail = detail;
    this.problem = problem;
  }

  get isAuth() {
    return this.status === 401 || this.status === 403;
  }
}

const apiKey = () => sessionStorage.getItem(KEY_STORAGE);

/** A fetch with the operator's key; problem replies become ApiErrors. AbortError passes. */
async function api(path, { method = "GET", body, headers = {}, signal } = {}) {
  const key = apiKey();
  if (!key) throw new ApiError(0, { code: "no_key", detail: "no API key is set" });
  const init = {
    method,
    signal,
    cache: "no-store",
    credentials: "omit",
    headers: { Accept: "application/json", ...headers, Authorization: `Bearer ${key}` },
  };
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers["Content-Type"] = "application/json";
  }
  let response;
  try {
    response = await fetch(API + path, init);
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError(0, { code: "network_error", detail: "the broker could not be reached" });
  }
  if (!response.ok) {
    let problem = null;
    try {
      problem = await response.json();
    } catch {
      problem = null; // not JSON: the status alone tells the story
    }
    throw new ApiError(response.status, problem && typeof problem === "object" ? problem : null);
  }
  return response;
}

const apiJson = async (path, options) => (await api(path, options)).json();
const sessionPath = (id) => `/sessions/${encodeURIComponent(id)}`;

// ---------------------------------------------------------------- errors on the page

function explain(err) {
  if (err.status === 401) return `The broker refused this API key (${err.status} ${err.code}): ${err.detail}.`;
  if (err.status === 403) return `This API key may not do that (${err.status} ${err.code}): ${err.detail}.`;
  if (err.status === 0) return `The broker could not be reached (${err.code}); retrying.`;
  return `The broker answered ${err.status} ${err.code}: ${err.detail}.`;
}

function show(banner, err) {
  if (!err) {
    banner.hidden = true;
    banner.textContent = "";
    banner.dataset.code = "";
    banner.dataset.status = "";
    return;
  }
  banner.hidden = false;
  banner.dataset.code = err.code;
  banner.dataset.status = String(err.status);
  banner.textContent = explain(err);
}

function report(err, banner = ui.error) {
  if (err?.name === "AbortError") return;
  if (!(err instanceof ApiError)) {
    console.error(err);
    err = new ApiError(0, { code: "client_error", detail: String(err?.message || err) });
  }
  if (err.isAuth && banner === ui.error) {
    // The key cannot read: nothing on the page can work; ask for another one.
    forgetKey();
  }
  show(banner, err);
}

// ---------------------------------------------------------------- loops

/** Run `fn(signal)` now and every `ms` after it settles; `kick()` runs it again at once. */
function loop(fn, ms) {
  const controller = new AbortController();
  let timer = null;
  let running = false;
  let again = false;
  async function tick() {
    timer = null;
    if (controller.signal.aborted) return;
    running = true;
    try {
      await fn(controller.signal);
    } catch (err) {
      if (!controller.signal.aborted) report(err);
    }
    running = false;
    if (controller.signal.aborted) return;
    if (again) {
      again = false;
      tick();
    } else {
      timer = setTimeout(tick, ms);
    }
  }
  tick();
  return {
    signal: controller.signal,
    kick() {
      if (running) again = true;
      else if (!controller.signal.aborted) {
        clearTimeout(timer);
        tick();
      }
    },
    stop() {
      controller.abort();
      clearTimeout(timer);
    },
  };
}

// ---------------------------------------------------------------- the key

function forgetKey() {
  sessionStorage.removeItem(KEY_STORAGE);
  stopWatching();
  ui.sessions.replaceChildren();
  ui.counts.replaceChildren();
  route();
}

ui.keyForm.addEventListener("submit", (event) => {
  event.preventDefault();
  const key = ui.keyInput.value.trim();
  ui.keyInput.value = "";
  if (!key) return;
  sessionStorage.setItem(KEY_STORAGE, key);
  show(ui.error, null);
  route();
});

ui.forgetKey.addEventListener("click", () => {
  show(ui.error, null);
  forgetKey();
});

// ---------------------------------------------------------------- routing

let listLoop = null;
let watch = null; // the open session page

function stopWatching() {
  listLoop?.stop();
  listLoop = null;
  watch?.stop();
  watch = null;
}

/** The session a hash names (`#/sessions/<id>`, or `…/audit`: at its audit trail), or null. */
function sessionRoute(hash) {
  const match = /^#\/sessions\/([^/?#]+)(\/audit)?$/.exec(hash);
  try {
    return match ? { id: decodeURIComponent(match[1]), audit: Boolean(match[2]) } : null;
  } catch {
    return null; // a malformed escape: show the list instead
  }
}

function route() {
  const target = sessionRoute(location.hash);
  if (watch && target?.id === watch.id && apiKey()) {
    // The same session's page, to or from its audit trail: scroll, keep the stream.
    if (target.audit) ui.auditCard.scrollIntoView({ block: "start" });
    return;
  }
  stopWatching();
  const key = apiKey();
  ui.keyView.hidden = Boolean(key);
  ui.keyStatus.hidden = !key;
  ui.sessionsView.hidden = true;
  ui.sessionView.hidden = true;
  if (!key) {
    ui.keyInput.focus();
    return;
  }
  ui.keyHint.textContent = `••••${key.slice(-4)}`;
  if (target) {
    ui.sessionView.hidden = false;
    watch = new SessionWatch(target.id, target.audit);
    watch.start();
  } else {
    ui.sessionsView.hidden = false;
    listLoop = loop(refreshList, LIST_POLL_MS);
  }
}

window.addEventListener("hashchange", route);

// ---------------------------------------------------------------- the session list

let wanted = PAGE_SIZE; // rows the operator asked to see ("load more" adds a page)

async function refreshList(signal) {
  const rows = [];
  let cursor = null;
  let counts = null;
  do {
    const params = new URLSearchParams({ limit: String(Math.min(MAX_LIMIT, wanted - rows.length)) });
    if (ui.stateFilter.value) params.set("state", ui.stateFilter.value);
    if (cursor) params.set("cursor", cursor);
    const page = await apiJson(`/sessions?${params}`, { signal });
    counts ??= page.counts ?? null;
    rows.push(...page.sessions);
    cursor = page.next_cursor;
  } while (cursor && rows.length < wanted);
  if (signal.aborted) return;
  show(ui.error, null);
  renderList(rows, Boolean(cursor), counts);
  await refreshApprovals(signal);
  await refreshUsage(signal);
  ui.refreshed.dataset.state = "ok";
  ui.refreshed.textContent = `updated ${clock(new Date().toISOString()).slice(0, 8)}`;
}

ui.stateFilter.addEventListener("change", () => {
  wanted = PAGE_SIZE;
  listLoop?.kick();
});

ui.loadMore.addEventListener("click", () => {
  wanted += PAGE_SIZE;
  listLoop?.kick();
});

function badge(kind, value) {
  return h("span", { class: "badge", data: { [kind]: value ?? "" }, text: value ?? "—" });
}

/** A phone call's mark in the list: the badge, its line and its caller (as stored). */
function phoneMark(row) {
  if (row.connection_type !== "sip") return null;
  return h(
    "span",
    { class: "phone-call", data: { line: row.sip_line ?? "" } },
    h("span", { class: "badge phone", data: { connection: "sip" }, title: "a phone call (SIP)", text: "☎ phone" }),
    " ",
    h("span", { class: "line mono", title: "line", text: row.sip_line ?? "—" }),
    " ",
    h("span", { class: "caller mono", title: "caller", text: row.caller ?? "—" }),
  );
}

function sidebandBadge(sideband) {
  if (!sideband?.enabled) return h("span", { class: "badge", data: { sideband: "disabled" }, text: "off (bridge)" });
  return badge("sideband", sideband.state);
}

function toolCallChips(calls) {
  if (!calls?.total) return h("span", { class: "muted", text: "—" });
  const chips = h("span", { class: "chips", data: { total: calls.total } });
  // The usual outcomes first, in a fixed order; then any other the API may add.
  for (const outcome of new Set([...OUTCOMES, ...Object.keys(calls)])) {
    const n = calls[outcome];
    if (outcome === "total" || typeof n !== "number" || n === 0) continue;
    chips.append(h("span", { class: "chip", data: { outcome }, title: outcome, text: `${n} ${outcome}` }));
  }
  return chips;
}

function renderList(rows, more, counts) {
  const fetchedAt = Date.now();
  const existing = new Map([...ui.sessions.children].map((tr) => [tr.dataset.sessionId, tr]));
  const ordered = rows.map((row) => {
    const tr = existing.get(row.id) ?? h("tr", { class: "session-row", tabindex: "0" });
    existing.delete(row.id);
    const signature = JSON.stringify({ ...row, age_s: null });
    if (tr.dataset.signature !== signature) {
      // Rebuilt only when something changed: a rebuild under the pointer would eat a click.
      tr.dataset.signature = signature;
      tr.dataset.sessionId = row.id;
      tr.dataset.state = row.state;
      tr.dataset.tenant = row.tenant;
      const link = h("a", { href: `#/sessions/${encodeURIComponent(row.id)}`, class: "mono", text: row.id });
      // The session's tenant beside it: a cross-tenant key's list mixes tenants.
      const tenant = h("span", { class: "tenant", title: "tenant", text: row.tenant });
      const phone = phoneMark(row);
      tr.dataset.connection = row.connection_type ?? "";
      tr.replaceChildren(
        h("td", {}, link, " ", tenant, phone ? " " : null, phone),
        h("td", {}, badge("state", row.state), row.end_reason ? h("span", { class: "reason", text: row.end_reason }) : null),
        h("td", { class: "mono", text: row.model }),
        h("td", { class: "num age", title: row.created_at }),
        h("td", {}, sidebandBadge(row.sideband)),
        h("td", { class: "tool-counts" }, toolCallChips(row.tool_calls)),
        h("td", { class: "last-event", title: row.last_event_at ?? "", data: { at: row.last_event_at ?? "" } }),
        h("td", { class: row.errors ? "num errors bad" : "num errors", text: row.errors }),
      );
    }
    const age = tr.querySelector("td.age");
    age.dataset.ageS = row.age_s;
    age.dataset.fetchedAt = fetchedAt;
    return tr;
  });
  const current = [...ui.sessions.children];
  if (current.length !== ordered.length || ordered.some((tr, i) => tr !== current[i])) {
    ui.sessions.replaceChildren(...ordered);
  }
  ui.sessionsEmpty.hidden = rows.length > 0;
  ui.loadMore.hidden = !more;
  renderCounts(rows, counts);
  tickTimes();
}

// ---------------------------------------------------------------- approvals

/** Approval-gated tool calls waiting for an operator: listed above the sessions. */
async function refreshApprovals(signal) {
  let page;
  try {
    page = await apiJson("/approvals?status=pending", { signal });
  } catch (err) {
    if (err?.name === "AbortError") throw err;
    ui.approvalsCard.hidden = true; // a broker without approvals, or a key that may not read them
    return;
  }
  if (signal.aborted) return;
  renderApprovals(page.approvals);
}

function renderApprovals(approvals) {
  ui.approvalsCard.hidden = approvals.length === 0 && ui.approvalError.hidden;
  const existing = new Map([...ui.approvals.children].map((tr) => [tr.dataset.approvalId, tr]));
  const rows = approvals.map((a) => {
    const kept = existing.get(a.id);
    if (kept) return kept; // rebuilt never: a rebuild under the pointer would eat a click
    const session = h("a", { href: `#/sessions/${encodeURIComponent(a.session_id)}`, class: "mono", text: a.session_id });
    return h(
      "tr",
      { class: "approval-row", data: { approvalId: a.id, tool: a.tool, sessionId: a.session_id } },
      h("td", { class: "mono", text: a.tool }),
      h("td", {}, session, " ", h("span", { class: "tenant", title: "tenant", text: a.tenant })),
      h("td", { class: "mono small", text: a.call_id }),
      h("td", { title: a.requested_at, text: clock(a.requested_at).slice(0, 8) }),
      h("td", { class: "expires", title: a.expires_at, data: { at: a.expires_at } }),
      h(
        "td",
        { class: "decide" },
        h("button", { type: "button", class: "approve", data: { approval: a.id, action: "approve" }, text: "Approve" }),
        h("button", { type: "button", class: "danger-quiet deny", data: { approval: a.id, action: "deny" }, text: "Deny" }),
      ),
    );
  });
  const current = [...ui.approvals.children];
  if (current.length !== rows.length || rows.some((tr, i) => tr !== current[i])) ui.approvals.replaceChildren(...rows);
  tickExpiries();
}

function tickExpiries() {
  for (const td of ui.approvals.querySelectorAll("td.expires")) {
    const left = (new Date(td.dataset.at).getTime() - Date.now()) / 1000;
    td.textContent = left > 0 ? `in ${duration(left)}` : "expiring…";
  }
}

async function decideApproval(button) {
  const { approval, action } = button.dataset;
  show(ui.approvalError, null);
  for (const b of button.parentElement.querySelectorAll("button")) b.disabled = true;
  button.dataset.busy = "true";
  try {
    await api(`/approvals/${encodeURIComponent(approval)}/${action}`, {
      method: "POST",
      body: { reason: `${action === "approve" ? "approved" : "denied"} from the ops dashboard` },
    });
    button.closest("tr")?.remove();
  } catch (err) {
    for (const b of button.parentElement.querySelectorAll("button")) b.disabled = false;
    report(err, ui.approvalError);
    ui.approvalsCard.hidden = false;
  } finally {
    delete button.dataset.busy;
    listLoop?.kick();
  }
}

ui.approvals.addEventListener("click", (event) => {
  const button = event.target.closest("button[data-approval]");
  if (button && !button.disabled) decideApproval(button);
});

/** The key's and its tenant's spend: "used / cap" per cap set, plain counts otherwise. */
async function refreshUsage(signal) {
  let usage;
  try {
    usage = await apiJson("/usage", { signal });
  } catch {
    ui.usage.hidden = true; // the list matters more: a usage failure is not an error here
    return;
  }
  const items = [];
  for (const scope of ["tenant", "key"]) {
    const owner = usage?.[scope];
    if (!owner) continue;
    const caps = owner.caps ?? {};
    const shown = [
      ["live calls", "max_live_calls", owner.used?.live_calls],
      ["sessions today", "max_sessions_per_day", owner.used?.sessions_today],
      ["tokens today", "max_tokens_per_day", owner.used?.tokens_today],
      ["tokens this month", "max_tokens_per_month", owner.used?.tokens_this_month],
    ];
    for (const [label, cap, used] of shown) {
      const limit = caps[cap];
      const text = limit ? `${limit.used} / ${limit.allowed}` : String(used ?? 0);
      const title = limit?.resets_at ? `resets ${new Date(limit.resets_at).toLocaleString()}` : undefined;
      items.push(
        h(
          "li",
          { data: { usage: `${scope}.${cap}`, reached: limit ? limit.remaining === 0 : undefined }, title },
          h("span", { class: "n", text }),
          h("span", { class: "label", text: `${scope} ${label}` }),
        ),
      );
    }
  }
  ui.usage.replaceChildren(...items);
  ui.usage.hidden = items.length === 0;
}

function renderCounts(rows, counts) {
  const items = [];
  if (counts && typeof counts === "object") {
    // The API's own totals (over every matching session), when it sends them.
    for (const [name, value] of Object.entries(counts)) {
      if (typeof value === "number") items.push([name, value]);
      else if (value && typeof value === "object") {
        for (const [sub, n] of Object.entries(value)) if (typeof n === "number") items.push([sub, n]);
      }
    }
  } else {
    // Otherwise a tally of the rows shown.
    const byState = Object.fromEntries(STATES.map((s) => [s, 0]));
    let tools = 0;
    let errors = 0;
    for (const row of rows) {
      byState[row.state] = (byState[row.state] ?? 0) + 1;
      tools += row.tool_calls?.total ?? 0;
      errors += row.errors ?? 0;
    }
    items.push(["in view", rows.length], ...Object.entries(byState).filter(([, n]) => n > 0));
    items.push(["tool calls", tools], ["errors", errors]);
  }
  ui.counts.replaceChildren(
    ...items.map(([name, n]) =>
      h("li", { data: { count: name } }, h("span", { class: "n", text: n }), h("span", { class: "label", text: name })),
    ),
  );
}

// Ages and "… ago" tick between polls (each row knows its age when it was fetched).
function tickTimes() {
  for (const cell of ui.sessions.querySelectorAll("td.age")) {
    const age = Number(cell.dataset.ageS) + (Date.now() - Number(cell.dataset.fetchedAt)) / 1000;
    cell.textContent = duration(age);
  }
  for (const cell of ui.sessions.querySelectorAll("td.last-event")) cell.textContent = ago(cell.dataset.at || null);
}

setInterval(tickTimes, 1000);
setInterval(tickExpiries, 1000);

ui.sessions.addEventListener("click", (event) => {
  const tr = event.target.closest("tr[data-session-id]");
  if (tr && !event.target.closest("a")) location.hash = `#/sessions/${encodeURIComponent(tr.dataset.sessionId)}`;
});
ui.sessions.addEventListener("keydown", (event) => {
  const tr = event.target.closest("tr[data-session-id]");
  if (tr && event.key === "Enter") location.hash = `#/sessions/${encodeURIComponent(tr.dataset.sessionId)}`;
});

// ---------------------------------------------------------------- event summaries

function itemSummary(item) {
  if (!item || typeof item !== "object") return "";
  if (item.type === "function_call") return `function_call ${item.name ?? "?"}(${item.arguments ?? ""})`;
  if (item.type === "function_call_output") return `output for ${item.call_id ?? "?"}: ${item.output ?? ""}`;
  if (item.type === "message") {
    const text = (item.content ?? [])
      .map((part) => part?.text ?? part?.transcript ?? (part?.type ? `[${part.type}]` : ""))
      .join(" ");
    return `${item.role ?? "?"}: ${text}`;
  }
  return String(item.type ?? "item");
}

// Bookkeeping fields every event carries: left out of the one-line summary (shown in full
// when the row is opened).
const NOISE = new Set(["type", "event_id", "response_id", "item_id", "previous_item_id", "output_index", "content_index"]);

function plain(payload) {
  const p = payload ?? {};
  const words = p.transcript ?? p.text;
  if (typeof words === "string") return words;
  return Object.entries(p)
    .filter(([name, value]) => !NOISE.has(name) && (value === null || typeof value !== "object"))
    .map(([name, value]) => `${name}=${value}`)
    .join(" · ");
}

function summarize(type, p) {
  p = p && typeof p === "object" ? p : {};
  switch (type) {
    case "broker.tool_call":
      return `${p.tool} → ${p.status}${p.handled_by ? ` (by ${p.handled_by})` : ""} · ${p.call_id}`;
    case "broker.ops_hangup":
      return `hung up by ${p.by}: ${p.reason}`;
    case "broker.transfer":
      return `transferred by ${p.by} to ${p.target_uri}`;
    case "broker.dtmf":
      return `caller pressed ${p.digit}`;
    case "broker.call_ended":
      return `call ended: ${p.reason}`;
    case "response.function_call_arguments.done":
      return `${p.name ?? "function call"}(${p.arguments ?? ""}) · ${p.call_id ?? ""}`;
    case "response.done": {
      const words = (p.response?.output ?? [])
        .map((item) => (item?.type === "message" ? itemSummary(item) : item?.type === "function_call" ? itemSummary(item) : ""))
        .filter(Boolean)
        .join(" | ");
      return `${p.response?.status ?? ""}${words ? ` · ${words}` : ""}`;
    }
    case "error":
      return `${p.error?.code ?? p.error?.type ?? "error"}: ${p.error?.message ?? ""}`;
    case "conversation.item.input_audio_transcription.completed":
      return `user said: ${p.transcript ?? ""}`;
    case "conversation.item.input_audio_transcription.failed":
      return `transcription failed: ${p.error?.code ?? p.error?.type ?? "error"}`;
    case "session.created":
    case "session.updated":
    case "session.update": {
      const s = p.session ?? {};
      const tools = Array.isArray(s.tools) ? `${s.tools.length} tool(s)` : "";
      return [s.model, s.voice, tools, s.instructions ? `“${s.instructions}”` : ""].filter(Boolean).join(" · ");
    }
    default:
      break;
  }
  if (p.item) return itemSummary(p.item);
  if (type.endsWith(".delta") && p.delta !== undefined) return typeof p.delta === "string" ? p.delta : JSON.stringify(p.delta);
  if (p.response?.status) return `response ${p.response.status}`;
  return plain(p);
}

// A spoken turn's words are input transcription's, and come after the turn: say when the
// ones shown are not (yet) all of them.
function lineNote(entry) {
  if (entry.transcription === "failed") return h("span", { class: "note", text: "not transcribed: the transcription failed" });
  if (entry.partial) return h("span", { class: "note", text: "… still being transcribed" });
  return null;
}

function isToolEvent(type, p) {
  if (type.startsWith("broker.tool")) return true;
  if (type.startsWith("response.function_call_arguments")) return true;
  const kind = p?.item?.type;
  return kind === "function_call" || kind === "function_call_output";
}

// ---------------------------------------------------------------- one session's page

class SessionWatch {
  constructor(id, atAudit = false) {
    this.id = id;
    this.atAudit = atAudit; // scroll to the audit trail once it is drawn
    this.controller = new AbortController();
    this.lastSeq = 0;
    this.detail = null;
    this.tools = null; // the kill switch's state: name → entry of GET /tools
    this.debounce = null;
    this.drawn = {}; // part → the JSON it was last drawn from
  }

  get signal() {
    return this.controller.signal;
  }

  start() {
    ui.sessionId.textContent = this.id;
    ui.timeline.replaceChildren();
    ui.toolCalls.replaceChildren();
    ui.transcript.replaceChildren();
    ui.toolSwitches.replaceChildren();
    ui.toolCallsEmpty.hidden = false;
    ui.transcriptEmpty.hidden = false;
    for (const cell of [ui.sessionModel, ui.sessionCreated, ui.sessionCall, ui.sessionEndReason]) cell.textContent = "";
    ui.sessionState.dataset.state = "";
    ui.sessionState.textContent = "…";
    ui.sessionSideband.dataset.sideband = "";
    ui.sessionSideband.textContent = "…";
    ui.hangup.disabled = true;
    ui.transfer.disabled = true;
    ui.transfer.hidden = true;
    ui.sessionPhone.hidden = true;
    ui.sessionPhoneFacts.hidden = true;
    ui.sessionAuditLink.href = `#${sessionPath(this.id)}/audit`;
    ui.auditRecords.replaceChildren();
    ui.auditEmpty.hidden = false;
    ui.auditCount.textContent = "";
    show(ui.auditError, null);
    show(ui.actionError, null);
    this.detailLoop = loop((signal) => this.refreshDetail(signal), DETAIL_POLL_MS);
    this.stream();
  }

  stop() {
    this.controller.abort();
    this.detailLoop?.stop();
    clearTimeout(this.debounce);
  }

  /** New events usually mean a changed detail (transcript, tool calls, state): fetch soon. */
  refreshSoon() {
    clearTimeout(this.debounce);
    this.debounce = setTimeout(() => this.detailLoop?.kick(), DETAIL_DEBOUNCE_MS);
  }

  async refreshDetail(signal) {
    const [detail, tools, audit] = await Promise.all([
      apiJson(sessionPath(this.id), { signal }),
      apiJson("/tools", { signal }),
      this.fetchAudit(signal),
    ]);
    if (signal.aborted) return;
    this.detail = detail;
    this.tools = new Map(tools.tools.map((t) => [t.name, t]));
    show(ui.error, null);
    this.renderDetail();
    if (audit) this.redraw("audit", audit, (records) => this.renderAudit(records));
  }

  /**
   * The session's audit records (oldest first), or null when they cannot be read.
   *
   * A key without `audit:read` still watches the session: the refusal is shown in the audit
   * card only (the page-wide banner would sign the operator out).
   */
  async fetchAudit(signal) {
    const records = [];
    let cursor = null;
    try {
      do {
        const params = new URLSearchParams({ session_id: this.id, limit: String(AUDIT_PAGE) });
        if (cursor) params.set("cursor", cursor);
        const page = await apiJson(`/audit?${params}`, { signal });
        records.push(...page.records);
        cursor = page.next_cursor;
      } while (cursor && records.length < MAX_AUDIT);
    } catch (err) {
      if (err?.name === "AbortError" || signal.aborted) return null;
      if (!(err instanceof ApiError)) throw err;
      show(ui.auditError, err);
      return null;
    }
    show(ui.auditError, null);
    return records;
  }

  renderAudit(records) {
    ui.auditEmpty.hidden = records.length > 0;
    ui.auditCount.textContent = records.length ? `${records.length} record${records.length === 1 ? "" : "s"}` : "";
    ui.sessionAuditLink.textContent = records.length ? `${records.length} record${records.length === 1 ? "" : "s"}` : "records";
    ui.auditRecords.replaceChildren(
      ...records.map((r) =>
        h(
          "tr",
          { class: "audit-record", data: { seq: r.seq, kind: r.kind, erased: r.body === null ? "true" : undefined } },
          h("td", { class: "num seq mono", text: r.seq }),
          h("td", { class: "at mono", title: r.at, text: clock(r.at) }),
          h("td", { class: "kind mono", text: r.kind }),
          h("td", { class: "actor mono", text: r.actor }),
          h("td", { class: "tool mono", text: r.tool ?? "" }),
          h("td", { class: "decision", text: r.decision ?? "" }),
        ),
      ),
    );
    if (this.atAudit) {
      this.atAudit = false;
      ui.auditCard.scrollIntoView({ block: "start" });
    }
  }

  renderDetail() {
    const d = this.detail;
    ui.sessionState.dataset.state = d.state;
    ui.sessionState.textContent = d.state;
    ui.sessionModel.textContent = d.model;
    if (d.sideband?.enabled) {
      ui.sessionSideband.dataset.sideband = d.sideband.state;
      ui.sessionSideband.textContent = d.sideband.state;
    } else {
      ui.sessionSideband.dataset.sideband = "disabled";
      ui.sessionSideband.textContent = "off (bridge)";
    }
    ui.sessionCreated.textContent = d.created_at ? `${new Date(d.created_at).toLocaleString()}` : "—";
    ui.sessionCreated.title = d.created_at ?? "";
    ui.sessionCall.textContent = d.call_id ?? "—";
    ui.sessionEndReason.textContent = d.end_reason ?? "—";
    if (!ui.hangup.dataset.busy) ui.hangup.disabled = !(RUNNING.has(d.state) && d.call_id);
    const phone = d.connection_type === "sip";
    ui.sessionPhone.hidden = !phone;
    ui.sessionPhoneFacts.hidden = !phone;
    ui.sessionLine.textContent = d.sip_line ?? "—";
    ui.sessionCaller.textContent = d.caller ?? "—";
    ui.transfer.hidden = !phone;
    if (!ui.transfer.dataset.busy) ui.transfer.disabled = !(phone && RUNNING.has(d.state) && d.call_id);
    // Redrawn only when changed: a redraw under the pointer or a text selection loses it.
    const switches = (d.tools ?? []).map((name) => [name, this.tools?.get(name) ?? null]);
    this.redraw("toolCalls", d.tool_calls ?? [], (calls) => this.renderToolCalls(calls));
    this.redraw("transcript", d.transcript ?? [], (entries) => this.renderTranscript(entries));
    this.redraw("switches", switches, () => this.renderSwitches(d.tools ?? []));
  }

  redraw(part, data, render) {
    const signature = JSON.stringify(data);
    if (this.drawn[part] === signature) return;
    this.drawn[part] = signature;
    render(data);
  }

  renderToolCalls(calls) {
    ui.toolCallsEmpty.hidden = calls.length > 0;
    ui.toolCalls.replaceChildren(
      ...calls.map((call) => {
        const took =
          call.finished_at && call.created_at
            ? `${Math.max(0, new Date(call.finished_at) - new Date(call.created_at))} ms`
            : "";
        return h(
          "li",
          { class: "tool-call", data: { callId: call.call_id, tool: call.tool, status: call.status, path: call.path ?? "" } },
          h(
            "div",
            { class: "tool-call-head" },
            h("span", { class: "name mono", text: call.tool }),
            badge("status", call.status),
            call.status === "held" ? h("span", { class: "awaiting", text: "pending approval" }) : null,
            h("span", { class: "muted small", text: [call.path, took, clock(call.created_at)].filter(Boolean).join(" · ") }),
          ),
          h("div", { class: "label", text: "arguments" }),
          h("pre", { class: "arguments", text: pretty(call.arguments) }),
          h("div", { class: "label", text: call.error ? `output · ${call.error}` : "output" }),
          h("pre", { class: "output", text: pretty(call.output) || (ENDED.has(call.status) ? "" : "…") }),
          h("div", { class: "muted small mono", text: call.call_id }),
        );
      }),
    );
  }

  renderTranscript(entries) {
    ui.transcriptEmpty.hidden = entries.length > 0;
    ui.transcript.replaceChildren(
      ...entries.map((entry) =>
        entry.type === "tool_call"
          ? h(
              "li",
              { class: "line tool-line", data: { role: "tool", callId: entry.call_id ?? "" } },
              h("span", { class: "who", text: "tool" }),
              h("span", { class: "mono", text: `${entry.name}(${entry.arguments ?? ""})${entry.output ? ` → ${entry.output}` : ""}` }),
            )
          : h(
              "li",
              {
                class: "line",
                data: {
                  role: entry.role,
                  partial: entry.partial ? "true" : undefined,
                  transcription: entry.transcription,
                },
              },
              h("span", { class: "who", text: entry.role }),
              h("span", { class: "words", text: entry.text }),
              lineNote(entry),
            ),
      ),
    );
  }

  renderSwitches(sessionTools) {
    ui.toolSwitches.replaceChildren(
      ...sessionTools.map((name) => {
        const entry = this.tools?.get(name);
        const disabled = Boolean(entry?.disabled);
        const button = h("button", {
          type: "button",
          class: disabled ? "toggle-tool" : "toggle-tool danger-quiet",
          data: { tool: name, action: disabled ? "enable" : "disable" },
          text: disabled ? "Enable" : "Disable",
        });
        const state = !entry ? "not configured" : disabled ? "off" : "on";
        const why = disabled ? [entry.disabled_by && `by ${entry.disabled_by}`, entry.reason].filter(Boolean).join(" · ") : "";
        return h(
          "li",
          { data: { tool: name, disabled: String(disabled) } },
          h(
            "div",
            { class: "switch-name" },
            h("span", { class: "name mono", text: name }),
            why ? h("span", { class: "switch-note", text: why }) : null,
          ),
          h("span", { class: disabled ? "switch-state off" : "switch-state", text: state }),
          entry ? button : null,
        );
      }),
    );
  }

  // ------------------------------------------------------------ the event stream

  setStreamState(state, text = state) {
    ui.streamStatus.dataset.state = state;
    ui.streamStatus.textContent = text;
  }

  async stream() {
    const signal = this.signal;
    let retryMs = 1000;
    while (!signal.aborted) {
      const headers = { Accept: "text/event-stream" };
      if (this.lastSeq > 0) headers["Last-Event-ID"] = String(this.lastSeq);
      this.setStreamState("connecting", this.lastSeq > 0 ? "reconnecting" : "connecting");
      try {
        const response = await api(`${sessionPath(this.id)}/events`, { headers, signal });
        this.setStreamState("live");
        await this.read(response.body, (ms) => (retryMs = ms));
        // The server ends the stream once the session is over and its log complete (or when
        // it shuts down: then the session is still running, and we resume where we were).
        const detail = await apiJson(sessionPath(this.id), { signal });
        if (ENDED.has(detail.state)) {
          this.setStreamState("complete", "complete");
          this.detailLoop?.kick();
          return;
        }
      } catch (err) {
        if (signal.aborted) return;
        if (err instanceof ApiError && err.status >= 400 && err.status < 500) {
          // Not something a retry fixes: a bad key, a missing scope, an unknown session.
          this.setStreamState("error", "stopped");
          report(err);
          return;
        }
        console.warn("event stream interrupted; resuming", err);
      }
      this.setStreamState("connecting", "reconnecting");
      await sleep(retryMs, signal);
    }
  }

  /** Read one SSE response to its end (https://html.spec.whatwg.org/#event-stream-interpretation). */
  async read(body, onRetry) {
    const reader = body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    let data = [];
    let eventName = "";
    let id = null;
    const dispatch = () => {
      if (id !== null && /^[0-9]+$/.test(id)) {
        const seq = Number(id);
        if (data.length && seq > this.lastSeq) {
          this.lastSeq = seq;
          this.onEvent(seq, eventName || "message", data.join("\n"));
        }
      }
      data = [];
      eventName = "";
      id = null;
    };
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return;
        buffer += value;
        let end;
        while ((end = buffer.indexOf("\n")) >= 0) {
          const line = buffer.slice(0, end).replace(/\r$/, "");
          buffer = buffer.slice(end + 1);
          if (line === "") {
            dispatch();
            continue;
          }
          if (line.startsWith(":")) continue; // a comment (keep-alive)
          const colon = line.indexOf(":");
          const field = colon < 0 ? line : line.slice(0, colon);
          let val = colon < 0 ? "" : line.slice(colon + 1);
          if (val.startsWith(" ")) val = val.slice(1);
          if (field === "data") data.push(val);
          else if (field === "event") eventName = val;
          else if (field === "id" && !val.includes("\0")) id = val;
          else if (field === "retry" && /^[0-9]+$/.test(val)) onRetry(Number(val));
        }
      }
    } finally {
      reader.releaseLock();
    }
  }

  onEvent(seq, direction, raw) {
    let message;
    try {
      message = JSON.parse(raw);
    } catch {
      message = { type: "unparsable", payload: { raw } };
    }
    const type = String(message.type ?? "?");
    const payload = message.payload;
    const tool = isToolEvent(type, payload);
    const row = h(
      "li",
      {
        class: tool ? "event tool" : "event",
        tabindex: "0",
        data: {
          seq: String(seq),
          direction,
          eventType: type,
          tool: tool ? "true" : undefined,
          delta: type.endsWith(".delta") ? "true" : undefined,
        },
      },
      h("time", { datetime: message.at ?? "", text: clock(message.at) }),
      h("span", { class: "dir", data: { direction }, title: DIRECTIONS[direction] ?? direction, text: direction }),
      h(
        "div",
        { class: "body" },
        h("span", { class: "type mono", text: type }),
        h("span", { class: "summary", text: clip(summarize(type, payload)) }),
      ),
    );
    row.payload = payload; // shown in full on demand
    const follow = ui.timeline.scrollHeight - ui.timeline.scrollTop - ui.timeline.clientHeight < 40;
    ui.timeline.append(row);
    while (ui.timeline.childElementCount > MAX_TIMELINE) ui.timeline.firstElementChild.remove();
    if (follow) ui.timeline.scrollTop = ui.timeline.scrollHeight;
    // A transcription's deltas are a spoken turn's words so far: the transcript shows them.
    if (!type.endsWith(".delta") || type.startsWith(TRANSCRIPTION_EVENTS)) this.refreshSoon();
  }

  // ------------------------------------------------------------ actions

  async hangup() {
    const d = this.detail;
    if (!d || !window.confirm(`Hang up ${this.id}?\n\nThe call ends for its user now.`)) return;
    show(ui.actionError, null);
    ui.hangup.dataset.busy = "true";
    ui.hangup.disabled = true;
    ui.hangup.textContent = "Hanging up…";
    try {
      await api(`${sessionPath(this.id)}/hangup`, {
        method: "POST",
        body: { reason: "hung up from the ops dashboard" },
        signal: this.signal,
      });
    } catch (err) {
      report(err, ui.actionError);
    } finally {
      delete ui.hangup.dataset.busy;
      ui.hangup.textContent = "Hang up";
      this.detailLoop?.kick();
    }
  }

  async transfer() {
    const d = this.detail;
    if (!d) return;
    const target = window.prompt(
      `Transfer ${this.id} to where?\n\ntel:+<number> (E.164) or a sip: URI. The call leaves the model now.`,
      "tel:+",
    );
    if (target === null || !target.trim() || target.trim() === "tel:+") return;
    show(ui.actionError, null);
    ui.transfer.dataset.busy = "true";
    ui.transfer.disabled = true;
    ui.transfer.textContent = "Transferring…";
    try {
      await api(`${sessionPath(this.id)}/transfer`, {
        method: "POST",
        body: { target_uri: target.trim() },
        signal: this.signal,
      });
    } catch (err) {
      report(err, ui.actionError);
    } finally {
      delete ui.transfer.dataset.busy;
      ui.transfer.textContent = "Transfer";
      this.detailLoop?.kick();
    }
  }

  async toggleTool(name, action) {
    const question =
      action === "disable"
        ? `Switch ${name} off for every session?\n\nIts new calls are denied until it is switched on again.`
        : `Switch ${name} back on for every session?`;
    if (!window.confirm(question)) return;
    show(ui.actionError, null);
    try {
      await api(`/tools/${encodeURIComponent(name)}/${action}`, {
        method: "POST",
        // enable takes no body at all; disable records why.
        body: action === "disable" ? { reason: "switched off from the ops dashboard" } : undefined,
        signal: this.signal,
      });
    } catch (err) {
      report(err, ui.actionError);
    } finally {
      this.detailLoop?.kick();
    }
  }
}

const DIRECTIONS = {
  in: "provider → broker",
  out: "broker → provider",
  broker: "broker decision",
};

ui.hangup.addEventListener("click", () => watch?.hangup());
ui.transfer.addEventListener("click", () => watch?.transfer());

ui.toolSwitches.addEventListener("click", (event) => {
  const button = event.target.closest("button[data-tool]");
  if (button) watch?.toggleTool(button.dataset.tool, button.dataset.action);
});

ui.hideDeltas.addEventListener("change", () => {
  ui.timeline.classList.toggle("hide-deltas", ui.hideDeltas.checked);
});

function togglePayload(row) {
  const open = row.querySelector("pre.payload");
  if (open) {
    open.remove();
    row.classList.remove("open");
    return;
  }
  row.classList.add("open");
  row.append(h("pre", { class: "payload", text: JSON.stringify(row.payload ?? null, null, 2) }));
}

ui.timeline.addEventListener("click", (event) => {
  const row = event.target.closest("li.event");
  if (row && !event.target.closest("pre")) togglePayload(row);
});
ui.timeline.addEventListener("keydown", (event) => {
  const row = event.target.closest("li.event");
  if (row && event.key === "Enter") togglePayload(row);
});

route();
