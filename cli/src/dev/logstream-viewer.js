// <logstream-viewer>: a job's log, live, in a custom element. A dependency-free ES module.
//
//   <logstream-viewer job="JOB" api="https://api.example" stream="https://sse.example">
//   viewer.token = "…";            // or viewer.tokenProvider = async () => "…"
//
// `api` serves the REST routes, `stream` the SSE route; both default to this page's
// origin. The token goes in an Authorization header for REST and, as EventSource cannot
// send headers, in the stream request's query (`?access_token=`); never in the address
// bar. Attributes may change at any time; the element follows the new job.
//
// How it stays fast on a log of any size: every entry has a dense number `n` (1, 2, …),
// so the list is virtual. Only the rows on screen are in the DOM; they are rebuilt from
// a cache of 500-entry pages, each fetched once with `?at=N` when first scrolled to
// (scrolling up loads earlier lines by itself), and at most KEEP_PAGES of them are kept.
// Live entries are queued and drawn once per animation frame, so a burst of thousands
// costs one layout. Rows have one fixed height (lines do not wrap; long ones scroll
// sideways), which maps a scroll offset to an entry number without measuring anything.
//
// Log text is untrusted: it is only ever set with textContent, and colours (a line's
// `ansi`: its text with SGR escapes, the only escapes the service keeps) become spans
// with classes, never markup.
//
// Events: `status` (detail: {status, exit_code?, duration_ms?}) and `line-selected`
// (detail: {n}) when a line number is clicked, for a page that keeps permalinks.

const PAGE = 500;          // entries per history request (the API's most)
const KEEP_PAGES = 400;    // pages kept in memory: 200 000 entries
const WAIT_MS = 2000;      // how often a job that does not exist yet is asked for again
const SCAN_PAGES = 2000;   // most pages read looking for a stage's end or the first error
const OVERSCAN = 20;       // rows drawn beyond the screen, above and below
// The tallest the list's spacer gets. Browsers cap an element's height (Firefox near
// 17.9 million px, Chromium near 33.5 million): past this the scroll position maps to
// rows in proportion instead of one row per rowH pixels.
const MAX_SCROLL_PX = 15_000_000;

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

// A line's `ansi` as spans: c-fg-N / c-bg-N for colour N of the 256-colour palette
// (24-bit colours take the nearest), b, d, i, u for bold, dim, italic, underline.
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

export function duration(ms) {
  const s = Math.floor(ms / 1000);
  if (s < 1) return ms + "ms";
  if (s < 60) return (ms / 1000).toFixed(1) + "s";
  if (s < 3600) return Math.floor(s / 60) + "m " + String(s % 60).padStart(2, "0") + "s";
  return Math.floor(s / 3600) + "h " + String(Math.floor(s % 3600 / 60)).padStart(2, "0") + "m";
}

// A time of day in the reader's time zone, to the millisecond: 14:03:07.412.
function clock(ms) {
  const d = new Date(ms);
  const two = (v) => String(v).padStart(2, "0");
  return `${two(d.getHours())}:${two(d.getMinutes())}:${two(d.getSeconds())}.${String(d.getMilliseconds()).padStart(3, "0")}`;
}

function cmpId(a, b) {
  const [am, as] = a.split("-").map(BigInt), [bm, bs] = b.split("-").map(BigInt);
  return am === bm ? (as < bs ? -1 : as > bs ? 1 : 0) : (am < bm ? -1 : 1);
}

// An entry that "jump to first error" stops at.
function isError(e) {
  return (e.kind === "line" && e.stream === "stderr") || (e.kind === "stage" && e.status === "failed");
}

// What stands in for entries the service no longer has (a job without an archive
// whose oldest entries Redis let go of): a row that says so, never fetched again.
function gone(n) {
  return { n, kind: "gone" };
}

function el(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined) node.textContent = text;
  return node;
}

export class LogstreamViewer extends HTMLElement {
  static observedAttributes = ["job", "api", "stream"];

  constructor() {
    super();
    this.token = "";
    this.tokenProvider = null;
    this.startLine = 0;
    this.gen = 0;
    this.source = null;
    this.built = false;
    this.reset();
  }

  reset() {
    this.pages = new Map();     // page index → entries by n - 1 - index * PAGE
    this.loading = new Map();   // page index → its fetch, while in flight
    this.failed = new Map();    // page index → when its fetch last failed
    this.last = 0;              // the highest n known
    this.lastId = null;         // the newest id shown: the stream resumes after it
    this.folds = [];            // hidden ranges of n, [from, to], sorted, disjoint
    this.foldAt = new Map();    // a folded stage's n → its range
    this.pending = [];          // live entries for the next frame
    this.frame = 0;
    this.follow = true;
    this.target = 0;            // the line opened by a permalink or a search
    this.match = null;          // the current search match: {q, id, n}
    this.firstError = 0;        // n of the first error, once known
    this.stageTimes = new Map(); // an ended stage's n → its duration (ms), once known
    this.folding = false;       // a fold is being worked out (its end fetched)
  }

  connectedCallback() {
    if (!this.built) this.build();
    if (this.getAttribute("job")) this.queueOpen();
  }

  disconnectedCallback() {
    this.gen++;
    if (this.source) this.source.close();
  }

  attributeChangedCallback() {
    if (this.isConnected && this.built) this.queueOpen();
  }

  queueOpen() {
    if (this.openQueued) return;
    this.openQueued = true;
    queueMicrotask(() => { this.openQueued = false; this.open(); });
  }

  build() {
    this.built = true;
    const bar = el("div", "lv-bar");
    this.statusEl = el("span", "lv-status");
    this.statusEl.setAttribute("aria-live", "polite");
    this.q = el("input", "lv-q");
    Object.assign(this.q, { type: "search", placeholder: "Search the whole log" });
    this.q.setAttribute("aria-label", "search the whole log");
    const prev = el("button", "lv-prev", "↑"), next = el("button", "lv-next", "↓");
    prev.title = "previous match"; next.title = "next match";
    this.found = el("span", "lv-found");
    const errorBtn = el("button", "lv-error", "First error");
    const times = el("label", "lv-times-label");
    this.timesBox = el("input", "lv-times");
    this.timesBox.type = "checkbox";
    times.append(this.timesBox, " Times");
    this.msg = el("span", "lv-msg");
    this.msg.setAttribute("role", "alert");
    bar.append(this.q, prev, next, this.found, errorBtn, times, this.msg, this.statusEl);
    this.log = el("div", "lv-log");
    this.log.tabIndex = 0;
    this.sizer = el("div", "lv-sizer");
    this.rows = el("div", "lv-rows");
    this.sizer.append(this.rows);
    this.log.append(this.sizer);
    this.newer = el("button", "lv-newer", "↓ new lines");
    this.newer.hidden = true;
    this.replaceChildren(bar, this.log, this.newer);

    const report = (err) => { this.msg.textContent = err.message; };
    next.onclick = () => this.find(1).catch(report);
    prev.onclick = () => this.find(-1).catch(report);
    this.q.addEventListener("keydown", (e) => { if (e.key === "Enter") this.find(e.shiftKey ? -1 : 1).catch(report); });
    this.q.addEventListener("input", () => { this.match = null; this.found.textContent = ""; this.draw(); });
    errorBtn.onclick = () => this.jumpToError().catch(report);
    this.timesBox.onchange = () => this.log.classList.toggle("show-ts", this.timesBox.checked);
    this.newer.onclick = () => this.toBottom();
    this.log.addEventListener("scroll", () => {
      this.follow = this.atBottom();
      if (this.follow) this.newer.hidden = true;
      this.schedule();
    });
    this.rows.addEventListener("click", (e) => {
      const row = e.target.closest(".row");
      if (!row) return;
      const n = Number(row.dataset.n);
      if (e.target.closest(".ln")) {
        this.target = n;
        this.draw();
        this.dispatchEvent(new CustomEvent("line-selected", { detail: { n } }));
      } else if (row.classList.contains("foldable")) {
        this.toggleFold(n).catch(report);
      }
    });
    this.rowH = this.measureRow();
  }

  measureRow() {
    const probe = el("div", "row line");
    probe.append(el("span", "t", "x"));
    this.rows.append(probe);
    const h = probe.getBoundingClientRect().height || 18;
    probe.remove();
    return h;
  }

  get api() { return this.getAttribute("api") || ""; }
  get streamBase() { return this.getAttribute("stream") || this.api; }
  get job() { return this.getAttribute("job") || ""; }

  async bearer() {
    return this.tokenProvider ? await this.tokenProvider() : this.token;
  }

  async fetchPage(query) {
    const res = await fetch(`${this.api}/jobs/${encodeURIComponent(this.job)}/logs?${query}`, {
      headers: { Authorization: "Bearer " + await this.bearer() },
    });
    const body = await res.json().catch(() => ({}));
    if (!res.ok) {
      const err = new Error(body.error ? body.error.message : res.statusText);
      err.status = res.status;
      throw err;
    }
    return body;
  }

  setStatus(status, ended) {
    const details = [];
    if (ended && ended.exit_code != null) details.push("exit code " + ended.exit_code);
    if (ended && ended.duration_ms != null) details.push(duration(ended.duration_ms));
    this.statusEl.textContent = details.length ? status + " (" + details.join(", ") + ")" : status;
    this.statusEl.className = "lv-status " + status;
    this.dispatchEvent(new CustomEvent("status", { detail: { status, ...(ended || {}) } }));
  }

  // Opens the job named by the attributes: its newest page, then the live stream from
  // just after it, at the bottom or at entry `line` (a permalink; by default
  // `startLine`, which a page may set before it sets `job`).
  async open(line = this.startLine) {
    this.startLine = 0;
    const gen = ++this.gen;
    if (this.source) this.source.close();
    this.source = null;
    this.reset();
    this.msg.textContent = "";
    this.statusEl.textContent = "";
    this.draw();
    const job = this.job;
    if (!job) return;
    if (line) this.target = line;
    let page;
    for (;;) {
      try { page = await this.fetchPage("limit=200"); break; } catch (err) {
        if (gen !== this.gen) return;
        if (err.status !== 404) { this.msg.textContent = err.message; return; }
        this.msg.textContent = `Waiting for job ${job} to start (it does not exist yet, or is not yours); checking every ${WAIT_MS / 1000} s.`;
        await new Promise((resolve) => setTimeout(resolve, WAIT_MS));
        if (gen !== this.gen) return;
      }
    }
    if (gen !== this.gen) return;
    this.msg.textContent = "";
    this.setStatus(page.status);
    for (const e of page.lines) this.store(e);
    this.draw();
    if (this.target) this.goToLine(this.target); else this.toBottom();
    await this.connect(gen);
  }

  // Follows the job live from just after the newest entry held. EventSource reconnects
  // by itself (resuming with Last-Event-ID) while its URL's token is good; a stream the
  // service closed for good (the token expired: 401) is opened again with a fresh token
  // when a tokenProvider gives one.
  async connect(gen, attempt = 0) {
    const start = this.lastId ? "last_event_id=" + encodeURIComponent(this.lastId) : "from=start";
    const token = await this.bearer();
    if (gen !== this.gen) return;
    const source = new EventSource(`${this.streamBase}/jobs/${encodeURIComponent(this.job)}/logs/stream?${start}&access_token=${encodeURIComponent(token)}`);
    this.source = source;
    let ended = false, heard = false;
    const hear = () => { heard = true; this.msg.textContent = ""; };
    source.onopen = hear;
    for (const kind of ["log", "stage", "status"]) source.addEventListener(kind, (ev) => { hear(); this.live(JSON.parse(ev.data)); });
    source.addEventListener("done", (ev) => { ended = true; const d = JSON.parse(ev.data); this.flush(); this.setStatus(d.status, d); source.close(); });
    source.addEventListener("deleted", () => { ended = true; this.setStatus("deleted"); source.close(); });
    source.onerror = () => {
      if (source.readyState !== EventSource.CLOSED || ended || gen !== this.gen) return;
      if (!this.tokenProvider || attempt >= 5) { this.msg.textContent = "stream closed"; return; }
      this.msg.textContent = "stream closed; reconnecting…";
      this.flush();
      const next = heard ? 0 : attempt + 1;
      setTimeout(() => { if (gen === this.gen) this.connect(gen, next); }, 1000 * (next + 1));
    };
  }

  // --- the entries ---------------------------------------------------------------

  entry(n) {
    const page = this.pages.get(Math.floor((n - 1) / PAGE));
    return page && page[(n - 1) % PAGE];
  }

  store(e) {
    if (!Number.isInteger(e.n) || e.n < 1) return;
    const index = Math.floor((e.n - 1) / PAGE);
    let page = this.pages.get(index);
    if (!page) { page = new Array(PAGE); this.pages.set(index, page); }
    page[(e.n - 1) % PAGE] = e;
    if (e.n > this.last) this.last = e.n;
    if (e.id && (!this.lastId || cmpId(e.id, this.lastId) > 0)) this.lastId = e.id;
  }

  // Fetches page `index` (entries index * PAGE + 1 …), once at a time, and not again
  // for a while after a failure.
  loadPage(index) {
    if (this.loading.has(index)) return this.loading.get(index);
    const failed = this.failed.get(index);
    if (failed && Date.now() - failed < 3000) return Promise.resolve(false);
    const gen = this.gen;
    const last = this.last;
    const loaded = this.fetchPage(`at=${index * PAGE + 1}&limit=${PAGE}`).then((page) => {
      if (gen !== this.gen) return false;
      for (const e of page.lines) this.store(e);
      // A page answers every entry of its range that the job still has: the others
      // (up to the newest known when it was asked for) are gone for good.
      for (let n = index * PAGE + 1; n <= Math.min(last, (index + 1) * PAGE); n++) {
        if (!this.entry(n)) this.store(gone(n));
      }
      this.failed.delete(index);
      this.evict(index);
      this.schedule();
      return true;
    }, (err) => {
      if (gen === this.gen) { this.failed.set(index, Date.now()); this.msg.textContent = err.message; }
      return false;
    });
    const loading = this.loading;
    loaded.finally(() => { if (loading.get(index) === loaded) loading.delete(index); });
    loading.set(index, loaded);
    return loaded;
  }

  // Entry `n`, fetched if need be (null if the job has none); throws when it could not
  // be fetched, so that a scan says so rather than answer as if the log ended.
  async fetchEntry(n) {
    if (!this.entry(n) && !(await this.loadPage(Math.floor((n - 1) / PAGE))) && !this.entry(n)) {
      throw new Error(`could not read line ${n}; try again`);
    }
    return this.entry(n) || null;
  }

  // Drops the pages farthest from the screen once more than KEEP_PAGES are held; never
  // the newest nor `keep` (the page just fetched, which a scan is about to read).
  evict(keep) {
    if (this.pages.size <= KEEP_PAGES) return;
    const here = Math.floor((this.nAt(this.firstRow()) - 1) / PAGE);
    const newest = Math.floor((this.last - 1) / PAGE);
    const order = [...this.pages.keys()].filter((i) => i !== newest && i !== keep)
      .sort((a, b) => Math.abs(b - here) - Math.abs(a - here));
    for (const index of order.slice(0, this.pages.size - KEEP_PAGES)) this.pages.delete(index);
  }

  // --- live ----------------------------------------------------------------------

  live(e) {
    this.pending.push(e);
    if (!this.frame) {
      this.frame = requestAnimationFrame(() => this.flush());
      // A hidden tab gets no frames: draw anyway, less often.
      this.frameTimer = setTimeout(() => this.flush(), 250);
    }
  }

  flush() {
    if (this.frame) cancelAnimationFrame(this.frame);
    clearTimeout(this.frameTimer);
    this.frame = 0;
    if (!this.pending.length) return;
    const follow = this.follow;
    let ended = null;
    for (const e of this.pending) {
      if (this.lastId && cmpId(e.id, this.lastId) <= 0) continue;  // never twice
      this.store(e);
      if (e.kind === "status") ended = e;
    }
    this.pending = [];
    this.evict();
    if (ended) this.setStatus(ended.status, ended);
    if (follow) this.toBottom(); else { this.newer.hidden = false; this.draw(); }
  }

  // --- the virtual list ----------------------------------------------------------

  hiddenCount() {
    let hidden = 0;
    for (const [a, b] of this.folds) hidden += b - a + 1;
    return hidden;
  }

  rowCount() { return Math.max(0, this.last - this.hiddenCount()); }

  // The entry number shown by row `index` (0-based).
  nAt(index) {
    let n = index + 1;
    for (const [a, b] of this.folds) { if (a <= n) n += b - a + 1; else break; }
    return n;
  }

  // The row that shows entry `n` (a folded entry: its stage's row).
  rowOf(n) {
    for (const [a, b] of this.folds) if (a <= n && n <= b) { n = a - 1; break; }
    let index = n - 1;
    for (const [a, b] of this.folds) if (b < n) index -= b - a + 1;
    return index;
  }

  // The list's height in px, and how many rows one px of it stands for beyond the first.
  spacerPx() { return Math.min(this.rowCount() * this.rowH, MAX_SCROLL_PX); }

  scaled() { return this.rowCount() * this.rowH > MAX_SCROLL_PX; }

  // The row at the top of the screen. Past MAX_SCROLL_PX, the scroll position is a
  // fraction of the whole list.
  firstRow() {
    if (!this.scaled()) return Math.max(0, Math.floor(this.log.scrollTop / this.rowH));
    const screen = Math.ceil(this.log.clientHeight / this.rowH);
    const room = Math.max(1, this.spacerPx() - this.log.clientHeight);
    const fraction = Math.min(1, this.log.scrollTop / room);
    return Math.max(0, Math.round(fraction * Math.max(0, this.rowCount() - screen)));
  }

  // The scroll position that puts row `index` at the top of the screen.
  scrollTopFor(index) {
    if (!this.scaled()) return index * this.rowH;
    const screen = Math.ceil(this.log.clientHeight / this.rowH);
    const room = Math.max(1, this.spacerPx() - this.log.clientHeight);
    return (index / Math.max(1, this.rowCount() - screen)) * room;
  }

  atBottom() { return this.log.scrollHeight - this.log.scrollTop - this.log.clientHeight < this.rowH * 2; }

  toBottom() {
    this.draw();
    this.log.scrollTop = this.log.scrollHeight;
    this.follow = true;
    this.newer.hidden = true;
    this.draw();
  }

  schedule() {
    if (this.drawFrame) return;
    this.drawFrame = requestAnimationFrame(() => { this.drawFrame = 0; this.draw(); });
  }

  draw() {
    if (!this.built) return;
    const count = this.rowCount();
    this.sizer.style.height = this.spacerPx() + "px";
    const top = this.firstRow();
    // Scaled, the rows are drawn from the top of the screen down, where the view is.
    const first = this.scaled() ? top : Math.max(0, top - OVERSCAN);
    const end = Math.min(count, top + Math.ceil(this.log.clientHeight / this.rowH) + OVERSCAN);
    this.rows.style.top = (this.scaled() ? this.log.scrollTop : first * this.rowH) + "px";
    const q = this.q.value.toLowerCase();
    const frag = document.createDocumentFragment();
    const wanted = new Set();
    for (let index = first; index < end; index++) {
      const n = this.nAt(index);
      const e = this.entry(n);
      if (!e) wanted.add(Math.floor((n - 1) / PAGE));
      frag.append(this.row(n, e, q));
    }
    this.rows.replaceChildren(frag);
    for (const index of wanted) this.loadPage(index);
  }

  row(n, e, q) {
    const row = el("div", "row");
    row.dataset.n = n;
    const ln = el("span", "ln", String(n));
    ln.title = "link to line " + n;
    const timed = e && Number.isFinite(e.ts);
    const ts = el("span", "ts", timed ? clock(e.ts) : "");
    if (timed) ts.title = new Date(e.ts).toISOString();
    row.append(ln, ts);
    const t = el("span", "t");
    if (!e) {
      row.classList.add("pending");
      t.textContent = "…";
    } else if (e.kind === "gone") {
      row.classList.add("gone");
      t.textContent = "(no longer kept)";
    } else if (e.kind === "line") {
      row.classList.add("line", e.stream);
      if (typeof e.ansi === "string") t.append(colouredText(e.ansi)); else t.textContent = e.text;
      if (q && e.text.toLowerCase().includes(q)) row.classList.add("hit");
    } else if (e.kind === "stage") {
      row.classList.add("stage", e.status);
      const folded = this.foldAt.has(n);
      let text = e.name + " — " + e.status;
      if (e.status === "started") {
        row.classList.add("foldable");
        if (folded) row.classList.add("folded");
        text = (folded ? "▸ " : "▾ ") + text;
        const [a, b] = folded ? this.foldAt.get(n) : [0, -1];
        if (folded) text += ` (${b - a + 1} entries hidden)`;
      } else {
        const took = this.stageDuration(n, e);
        if (took != null) text += " (" + duration(took) + ")";
      }
      t.textContent = text;
    } else if (e.kind === "status") {
      row.classList.add("statusline", e.status);
      t.textContent = "● job " + e.status;
    }
    if (n === this.target) row.classList.add("target");
    if (this.match && this.match.n === n) row.classList.add("current");
    row.append(t);
    return row;
  }

  // How long the stage that entry `n` ends ran: from its `started` entry, when that is
  // among the entries held and at most 10 000 entries before.
  stageDuration(n, e) {
    if (this.stageTimes.has(n)) return this.stageTimes.get(n);
    let took = null;
    for (let m = n - 1; m >= Math.max(1, n - 20 * PAGE); m--) {
      const s = this.entry(m);
      if (!s) return null;  // not held (yet): asked again at the next draw
      if (s.kind === "stage" && s.name === e.name && s.status === "started") { took = e.ts - s.ts; break; }
    }
    this.stageTimes.set(n, took);
    return took;
  }

  // Shows entry `n` a third of the way down the screen, unfolding what hides it.
  goToLine(n) {
    if (!(n >= 1)) return;
    this.target = n;
    for (const [a, b] of this.folds) if (a <= n && n <= b) this.unfold(a - 1);
    this.follow = false;
    this.draw();
    const third = Math.floor(this.log.clientHeight / this.rowH / 3);
    this.log.scrollTop = Math.max(0, this.scrollTopFor(Math.max(0, this.rowOf(n) - third)));
    this.draw();
  }

  // --- folding -------------------------------------------------------------------

  unfold(n) {
    const range = this.foldAt.get(n);
    if (!range) return;
    this.foldAt.delete(n);
    this.folds = this.folds.filter((f) => f !== range);
  }

  // Folds the stage whose `started` entry is `n` up to its end (or unfolds it).
  async toggleFold(n) {
    if (this.folding) return;  // one at a time: two at once could nest in each other
    const offset = this.rowOf(n) - this.firstRow();
    if (this.foldAt.has(n)) {
      this.unfold(n);
    } else {
      const start = this.entry(n);
      this.folding = true;
      let end;
      try { end = await this.findEnd(n, start.name); } finally { this.folding = false; }
      if (!end) { this.msg.textContent = `stage ${start.name} has not ended yet`; return; }
      // Folded away by another fold meanwhile: nothing to do.
      if (this.folds.some(([a, b]) => a <= n && n <= b)) return;
      let range = [n + 1, end];
      // Folds that overlap this one (sections closed out of order) or lie inside it
      // become part of it: the hidden ranges stay disjoint.
      for (const [at, r] of [...this.foldAt]) {
        if (r[0] <= range[1] && range[0] <= r[1]) {
          this.unfold(at);
          range = [Math.min(range[0], r[0]), Math.max(range[1], r[1])];
        }
      }
      this.folds = [...this.folds, range].sort((x, y) => x[0] - y[0]);
      this.foldAt.set(n, range);
    }
    this.follow = false;
    this.draw();
    this.log.scrollTop = this.scrollTopFor(Math.max(0, this.rowOf(n) - offset));
    this.draw();
  }

  async findEnd(n, name) {
    const gen = this.gen;
    for (let m = n + 1, pages = 0; m <= this.last && pages < SCAN_PAGES; m++) {
      let e = this.entry(m);
      if (!e) { pages++; e = await this.fetchEntry(m); if (gen !== this.gen || !e) return 0; }
      if (e.kind === "stage" && e.name === name && e.status !== "started") return m;
    }
    return 0;
  }

  // --- search and the first error ------------------------------------------------

  // The next (dir 1) or previous (dir -1) line containing the search text, over the
  // whole job (the server's `q`), from the current match or the top of the screen.
  async find(dir) {
    const q = this.q.value;
    if (!q) return;
    let from = this.match && this.match.q === q ? this.match.id : null;
    if (!from) {
      const top = this.entry(this.nAt(this.firstRow()));
      from = top ? top.id : null;
    }
    let cursor = dir > 0 ? "&after=" + encodeURIComponent(from || "0-0") : (from ? "&before=" + encodeURIComponent(from) : "");
    const gen = this.gen;
    let hit;
    // A request reads a bounded part of the job: one that found nothing yet says where
    // it stopped (`has_more` and the next cursor), and the search goes on from there.
    for (;;) {
      const page = await this.fetchPage(`q=${encodeURIComponent(q)}&limit=1${cursor}`);
      if (gen !== this.gen || q !== this.q.value) return;
      hit = page.lines[0];
      const next = dir > 0 ? page.next_after : page.next_before;
      if (hit || !page.has_more || !next) break;
      this.found.textContent = "searching…";
      cursor = (dir > 0 ? "&after=" : "&before=") + encodeURIComponent(next);
    }
    if (!hit) { this.found.textContent = dir > 0 ? "no more matches below" : "no more matches above"; return; }
    this.store(hit);
    this.match = { q, id: hit.id, n: hit.n };
    this.found.textContent = "line " + hit.n;
    this.goToLine(hit.n);
  }

  // The first stderr line or failed stage of the job, read from the start.
  async jumpToError() {
    const gen = this.gen;
    if (!this.firstError) {
      this.found.textContent = "looking for the first error…";
      for (let n = 1, pages = 0; n <= this.last && pages < SCAN_PAGES; n++) {
        let e = this.entry(n);
        if (!e) { pages++; e = await this.fetchEntry(n); if (gen !== this.gen) return; if (!e) break; }
        if (isError(e)) { this.firstError = n; break; }
      }
    }
    this.found.textContent = this.firstError ? "first error: line " + this.firstError : "no error in this log";
    if (this.firstError) this.goToLine(this.firstError);
  }
}

if (!customElements.get("logstream-viewer")) customElements.define("logstream-viewer", LogstreamViewer);
