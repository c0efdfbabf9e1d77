// The page `logstream dev` serves at `/`: a job id and a token, and <logstream-viewer>
// (logstream-viewer.js, the same module a frontend embeds) showing the job.
//
// Links: `/?job=ID#access_token=TOKEN` opens a job with a token, which is read once
// and removed from the address bar (this tab keeps it in sessionStorage, so a reload
// still works and a copied link never carries it); `/?job=ID#L120` opens it at entry
// 120. Clicking a line number puts that permalink in the address bar.
import "/logstream-viewer.js";

const $ = (id) => document.getElementById(id);
const viewer = $("viewer"), msg = $("msg");

function open(line) {
  const job = $("job").value.trim(), token = $("token").value.trim();
  if (!job) return;
  msg.textContent = "";
  history.replaceState(null, "", `/?job=${encodeURIComponent(job)}${line ? "#L" + line : ""}`);
  sessionStorage.setItem("logstream.token", token);
  // A share link's holder reads; only a signed-in reader (a JWT) makes links.
  $("share").hidden = token.startsWith("lss1.");
  $("shared").hidden = true;
  viewer.token = token;
  viewer.startLine = line || 0;
  if (viewer.getAttribute("job") === job) viewer.open();
  else viewer.setAttribute("job", job);
}

// A link anyone can open for a while, without an account: the token of a share link
// (POST /jobs/{id}/share) in the fragment, which the page reads once and removes.
async function share() {
  const job = viewer.getAttribute("job");
  const res = await fetch(`/jobs/${encodeURIComponent(job)}/share`, {
    method: "POST",
    headers: { Authorization: "Bearer " + viewer.token, "Content-Type": "application/json" },
    body: "{}",
  });
  const body = await res.json();
  if (!res.ok) throw new Error(body.error ? body.error.message : res.statusText);
  $("share-link").value = `${location.origin}/?job=${encodeURIComponent(job)}#access_token=${encodeURIComponent(body.token)}`;
  $("share-expiry").textContent = "until " + new Date(body.expires_at).toLocaleString();
  $("shared").hidden = false;
  $("share-link").select();
}

$("follow").onclick = () => open();
$("share").onclick = () => share().catch((err) => { msg.textContent = err.message; });
for (const id of ["job", "token"]) $(id).addEventListener("keydown", (e) => { if (e.key === "Enter") open(); });
viewer.addEventListener("line-selected", (e) => {
  history.replaceState(null, "", `/?job=${encodeURIComponent(viewer.getAttribute("job"))}#L${e.detail.n}`);
});

// The job and token a link brings: the token in the fragment (`#access_token=`, never
// sent to a server) or, from older links, in the query; either is removed at once. Also
// when only the fragment changes (a link to this same page does not reload it): a new
// `#L` on the job already open only moves to that line.
function openFromLink() {
  const query = new URLSearchParams(location.search);
  const lineMatch = /^#L(\d+)$/.exec(location.hash);
  const fragment = lineMatch ? new URLSearchParams() : new URLSearchParams(location.hash.slice(1));
  const line = lineMatch ? Number(lineMatch[1]) : 0;
  const linkJob = fragment.get("job") || query.get("job");
  const linkToken = fragment.get("access_token") || query.get("access_token");
  if (linkToken || (location.hash && !lineMatch)) {
    history.replaceState(null, "", linkJob ? `/?job=${encodeURIComponent(linkJob)}` : "/");
  }
  if (!linkJob) return;
  if (linkJob === viewer.getAttribute("job") && line && !linkToken) { viewer.goToLine(line); return; }
  $("job").value = linkJob;
  $("token").value = linkToken || sessionStorage.getItem("logstream.token") || "";
  open(line);
}
window.addEventListener("hashchange", openFromLink);
openFromLink();
