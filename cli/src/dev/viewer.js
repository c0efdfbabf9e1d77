"use strict";
const $ = (id) => document.getElementById(id);
const log = $("log"), earlierBtn = $("earlier"), newerBtn = $("newer"), statusEl = $("status"), msg = $("msg");
let source = null, job = "", token = "", lastId = null, oldestId = null;

function cmpId(a, b) {
  const [am, as] = a.split("-").map(BigInt), [bm, bs] = b.split("-").map(BigInt);
  return am === bm ? (as < bs ? -1 : as > bs ? 1 : 0) : (am < bm ? -1 : 1);
}
function atBottom() { return log.scrollHeight - log.scrollTop - log.clientHeight < 40; }
// A job's status; once it has ended, with its exit code and how long it ran.
function setStatus(s, ended) {
  const details = [];
  if (ended && ended.exit_code != null) details.push("exit code " + ended.exit_code);
  if (ended && ended.duration_ms != null) details.push(duration(ended.duration_ms));
  statusEl.textContent = details.length ? s + " (" + details.join(", ") + ")" : s;
  statusEl.className = s;
}

function duration(ms) {
  const s = Math.floor(ms / 1000);
  if (s < 1) return ms + "ms";
  if (s < 60) return (ms / 1000).toFixed(1) + "s";
  if (s < 3600) return Math.floor(s / 60) + "m " + String(s % 60).padStart(2, "0") + "s";
  return Math.floor(s / 3600) + "h " + String(Math.floor(s % 3600 / 60)).padStart(2, "0") + "m";
}

// Colours: a line's `ansi` is its text with SGR escapes (the service keeps no other).
// Each run of text between them becomes a span with textContent and classes only:
// c-fg-N / c-bg-N for colour N of the 256-colour palette (24-bit colours take the
// nearest), b, d, i, u for bold, dim, italic, underline. Nothing else is read from it.
const SGR = /\x1b\[([0-9;:]*)m/g;

function rgb256(r, g, b) {
  if (r === g && g === b) return r < 8 ? 16 : r > 248 ? 231 : 232 + Math.round((r - 8) / 247 * 23);
  const q = (v) => Math.round(Math.min(255, Math.max(0, v)) / 255 * 5);
  return 16 + 36 * q(r) + 6 * q(g) + q(b);
}

// Applies one SGR's parameters to `st`.
function applySgr(st, params) {
  const parts = params === "" ? ["0"] : params.split(";");
  for (let i = 0; i < parts.length; i++) {
    const sub = parts[i].split(":").map((x) => (x === "" ? 0 : Number(x)));
    const n = sub[0];
    if (n === 38 || n === 48) {
      let colour = null;
      if (sub.length > 1) {  // 38:5:N, 38:2:R:G:B, 38:2:CS:R:G:B
        if (sub[1] === 5) colour = sub[2];
        else if (sub[1] === 2 && sub.length >= 5) colour = rgb256(...sub.slice(-3));
      } else if (parts[i + 1] === "5") { colour = Number(parts[i + 2]); i += 2; }
      else if (parts[i + 1] === "2") { colour = rgb256(Number(parts[i + 2]), Number(parts[i + 3]), Number(parts[i + 4])); i += 4; }
      if (Number.isInteger(colour) && colour >= 0 && colour < 256) st[n === 38 ? "fg" : "bg"] = colour;
    } else if (n === 0) { Object.assign(st, { fg: null, bg: null, b: false, d: false, i: false, u: false }); }
    else if (n === 1) st.b = true; else if (n === 2) st.d = true; else if (n === 3) st.i = true; else if (n === 4) st.u = true;
    else if (n === 22) { st.b = false; st.d = false; } else if (n === 23) st.i = false; else if (n === 24) st.u = false;
    else if (n >= 30 && n <= 37) st.fg = n - 30; else if (n === 39) st.fg = null;
    else if (n >= 40 && n <= 47) st.bg = n - 40; else if (n === 49) st.bg = null;
    else if (n >= 90 && n <= 97) st.fg = n - 82; else if (n >= 100 && n <= 107) st.bg = n - 92;
  }
}

function colouredText(ansi) {
  const frag = document.createDocumentFragment();
  const st = { fg: null, bg: null, b: false, d: false, i: false, u: false };
  const run = (text) => {
    if (!text) return;
    const span = document.createElement("span");
    span.textContent = text;
    const cls = [];
    if (st.fg !== null) cls.push("c-fg-" + st.fg);
    if (st.bg !== null) cls.push("c-bg-" + st.bg);
    for (const k of ["b", "d", "i", "u"]) if (st[k]) cls.push(k);
    if (cls.length) span.className = cls.join(" ");
    frag.append(span);
  };
  let last = 0;
  for (const m of ansi.matchAll(SGR)) {
    run(ansi.slice(last, m.index));
    applySgr(st, m[1]);
    last = m.index + m[0].length;
  }
  run(ansi.slice(last));
  return frag;
}

// Builds the element for one entry. Text is only ever set with textContent: log lines
// are untrusted output and must never become markup.
function render(e) {
  const el = document.createElement("div");
  el.dataset.id = e.id;
  if (e.kind === "line") {
    el.className = "line " + e.stream;
    const t = document.createElement("span"); t.className = "t";
    if (typeof e.ansi === "string") t.append(colouredText(e.ansi)); else t.textContent = e.text;
    el.append(t);
  } else if (e.kind === "stage") {
    el.className = "stage " + e.status;
    el.textContent = "▸ " + e.name + " — " + e.status;
  } else if (e.kind === "status") {
    el.className = "statusline " + e.status;
    el.textContent = "● job " + e.status;
  }
  return el;
}

function append(e) {
  if (lastId && cmpId(e.id, lastId) <= 0) return;  // never show an entry twice
  const follow = atBottom();
  log.append(render(e));
  if (e.kind === "status") setStatus(e.status, e);
  lastId = e.id;
  if (follow) log.scrollTop = log.scrollHeight; else newerBtn.style.display = "block";
}

async function fetchPage(query) {
  const res = await fetch(`/jobs/${encodeURIComponent(job)}/logs?${query}`, { headers: { Authorization: "Bearer " + token } });
  const body = await res.json();
  if (!res.ok) {
    const err = new Error(body.error ? body.error.message : res.statusText);
    err.status = res.status;
    throw err;
  }
  return body;
}

// How often a page opened before its job exists asks for it again.
const WAIT_MS = 2000;
// Counts opens: a wait that a later open superseded stops.
let opening = 0;

async function loadEarlier() {
  if (!oldestId) return;
  const page = await fetchPage("limit=200&before=" + encodeURIComponent(oldestId));
  const height = log.scrollHeight;
  const frag = document.createDocumentFragment();
  for (const e of page.lines) frag.append(render(e));
  earlierBtn.after(frag);
  log.scrollTop += log.scrollHeight - height;  // keep what the reader was looking at in place
  oldestId = page.next_before;
  earlierBtn.hidden = !oldestId;
}

async function open() {
  job = $("job").value.trim(); token = $("token").value.trim();
  if (!job) return;
  const mine = ++opening;
  if (source) source.close();
  for (const el of [...log.children]) if (el !== earlierBtn) el.remove();
  msg.textContent = ""; lastId = null; setStatus("");
  // The address bar names the job only: a copied link never carries the token, which
  // this tab keeps in sessionStorage so a reload still works.
  history.replaceState(null, "", `/?job=${encodeURIComponent(job)}`);
  sessionStorage.setItem("logstream.token", token);
  // A job that does not exist yet (the page was opened before the pipeline created
  // it; a job of someone else's looks the same) is asked for again until it does.
  let page;
  for (;;) {
    try { page = await fetchPage("limit=200"); break; } catch (err) {
      if (mine !== opening) return;
      if (err.status !== 404) { msg.textContent = err.message; return; }
      msg.textContent = `Waiting for job ${job} to start (it does not exist yet, or is not yours); checking every ${WAIT_MS / 1000} s.`;
      await new Promise((resolve) => setTimeout(resolve, WAIT_MS));
      if (mine !== opening) return;
    }
  }
  msg.textContent = "";
  setStatus(page.status);
  // A share link's holder reads; only a signed-in reader (a JWT) makes links.
  $("share").hidden = token.startsWith("lss1.");
  $("shared").hidden = true;
  for (const e of page.lines) append(e);
  oldestId = page.next_before; earlierBtn.hidden = !oldestId;
  log.scrollTop = log.scrollHeight;
  // Resume right after the newest entry shown, so nothing falls between history and live.
  const start = lastId ? "last_event_id=" + encodeURIComponent(lastId) : "from=start";
  source = new EventSource(`/jobs/${encodeURIComponent(job)}/logs/stream?${start}&access_token=${encodeURIComponent(token)}`);
  for (const kind of ["log", "stage", "status"]) source.addEventListener(kind, (ev) => append(JSON.parse(ev.data)));
  source.addEventListener("done", (ev) => { const d = JSON.parse(ev.data); setStatus(d.status, d); source.close(); });
  source.addEventListener("deleted", () => { setStatus("deleted"); source.close(); });
  source.onerror = () => { if (source.readyState === EventSource.CLOSED) msg.textContent = "stream closed"; };
}

// A link anyone can open for a while, without an account: the token of a share link
// (POST /jobs/{id}/share) in the fragment, which the page reads once and removes.
async function share() {
  const res = await fetch(`/jobs/${encodeURIComponent(job)}/share`, {
    method: "POST",
    headers: { Authorization: "Bearer " + token, "Content-Type": "application/json" },
    body: "{}",
  });
  const body = await res.json();
  if (!res.ok) throw new Error(body.error ? body.error.message : res.statusText);
  $("share-link").value = `${location.origin}/?job=${encodeURIComponent(job)}#access_token=${encodeURIComponent(body.token)}`;
  $("share-expiry").textContent = "until " + new Date(body.expires_at).toLocaleString();
  $("shared").hidden = false;
  $("share-link").select();
}

$("follow").onclick = open;
$("share").onclick = () => share().catch((err) => { msg.textContent = err.message; });
for (const id of ["job", "token"]) $(id).addEventListener("keydown", (e) => { if (e.key === "Enter") open(); });
earlierBtn.onclick = () => loadEarlier().catch((err) => { msg.textContent = err.message; });
newerBtn.onclick = () => { log.scrollTop = log.scrollHeight; };
log.addEventListener("scroll", () => { if (atBottom()) newerBtn.style.display = "none"; });
// A link may bring the job and the token: the token in the fragment (`#access_token=`,
// never sent to a server), or in the query as older links did. Either is read once and
// removed from the address bar at once.
// Also when only the fragment changes (a link to this same page does not reload it).
function openFromLink() {
  const query = new URLSearchParams(location.search), fragment = new URLSearchParams(location.hash.slice(1));
  const linkJob = fragment.get("job") || query.get("job");
  const linkToken = fragment.get("access_token") || query.get("access_token");
  if (linkToken || location.hash) history.replaceState(null, "", linkJob ? `/?job=${encodeURIComponent(linkJob)}` : "/");
  if (linkJob) {
    $("job").value = linkJob;
    $("token").value = linkToken || sessionStorage.getItem("logstream.token") || "";
    open();
  }
}
window.addEventListener("hashchange", openFromLink);
openFromLink();
