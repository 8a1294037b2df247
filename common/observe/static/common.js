// Helpers every page shares: escaping, numbers, fetching with the master's own error text.
const esc = s => String(s ?? "").replace(/[&<>"']/g, c => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
const num = (x, d = 1) => x == null ? "–" : Number(x).toFixed(d);
const mib = n => n == null ? "–" : (n / 1048576).toFixed(1) + " MiB";
const STATE_COLOURS = {running: "#1f77b4", done: "#2e7d32", failed: "#d62728", cancelled: "#9e9e9e"};
const state = s => `<span class="state" style="background:${STATE_COLOURS[s] || "#607080"}">${esc(s)}</span>`;
// What to do when the dashboard cannot reach the master (a 503 carries the address it tried).
const UNREACHABLE = "Start the master (`shardmill master`), or restart this dashboard pointed at it: " +
  "`shardmill dashboard --master tcp://HOST:5556`. This page retries every second.";

class HttpError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function get(path) {
  const r = await fetch(path);
  let body = null;
  try { body = await r.json(); } catch (e) { body = null; }
  if (!r.ok) throw new HttpError(r.status, (body && body.detail) || r.statusText);
  return body;
}

function notice(text, help = "") {  // the page's one line of trouble, and what to do about it
  const el = document.getElementById("notice");
  el.hidden = !text;
  el.innerHTML = text ? `<b>${esc(text)}</b>${help ? "<br>" + esc(help) : ""}` : "";
}

function trouble(e) {
  notice("master: " + e.message, e.status === 503 ? UNREACHABLE : "");
}

// A progress bar: done in the job's colour (red when it failed), failed shards in red after it.
function progress(j) {
  const total = j.shards_total || 1;
  const done = 100 * j.shards_done / total, failed = 100 * j.shards_failed / total;
  const colour = j.state === "failed" ? STATE_COLOURS.failed : STATE_COLOURS[j.state] || STATE_COLOURS.done;
  return `<span class="bar" data-state="${esc(j.state)}"><span class="done" style="width:${done}%;background:${colour}"></span>` +
    `<span class="failed" style="width:${failed}%;background:${STATE_COLOURS.failed}"></span></span>`;
}

async function every(seconds, look) {  // the next look `seconds` after this one ends: never piling up
  if (await look() !== true) setTimeout(() => every(seconds, look), seconds * 1000);
}
