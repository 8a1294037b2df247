// The task stream: one lane per worker slot, a bar per attempt coloured by its outcome, and a
// time axis with round ticks. SVG on purpose: each bar is an element a click or a test can find.
function colourOf(job, outcome) {
  const first = String(outcome).split(" (")[0];
  const hit = job.legend.find(l => l.outcome === first) || job.legend.find(l => l.outcome === "other");
  return hit.colour;
}

function legendHtml(legend) {
  return legend.map(l => `<span data-outcome="${esc(l.outcome)}" title="${esc(l.meaning)}"><span class="swatch" style="background:${l.colour}"></span>` +
    `<b>${esc(l.outcome)}</b> ${esc(l.meaning)}</span>`).join("");
}

function ticks(span) {  // about 8 round steps over [0, span]
  const raw = span / 8 || 1, mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map(m => m * mag).find(s => s >= raw);
  const out = [];
  for (let t = 0; t <= span + 1e-9; t += step) out.push(Number(t.toPrecision(6)));
  return out;
}

function streamSvg(job, width) {
  const LANE = 18, LABEL = 230, AXIS = 28, lanes = Math.max(1, job.lanes.length);
  const scale = (width - LABEL - 20) / (job.length || 1e-9), h = LANE * lanes + AXIS;
  const lost = new Set(job.lost_workers), row = new Map(job.lanes.map((l, i) => [l.worker + "#" + l.slot, i]));
  let svg = `<svg width="${width}" height="${h}" role="img" aria-label="task stream">`;
  for (const t of ticks(job.length)) {
    const x = (LABEL + t * scale).toFixed(1);
    svg += `<line class="grid" x1="${x}" x2="${x}" y1="0" y2="${LANE * lanes}"/><line class="axis" x1="${x}" x2="${x}" y1="${LANE * lanes}" y2="${LANE * lanes + 4}"/>` +
      `<text class="tick" x="${x}" y="${LANE * lanes + 16}" text-anchor="middle">${t} s</text>`;
  }
  svg += `<line class="axis" x1="${LABEL}" x2="${width - 20}" y1="${LANE * lanes}" y2="${LANE * lanes}"/>`;
  job.lanes.forEach((l, i) => svg += `<text x="2" y="${i * LANE + 13}" class="lane${lost.has(l.worker) ? " lost" : ""}">` +
    `${esc(l.worker)} #${l.slot}${lost.has(l.worker) ? " (lost)" : ""}</text>`);
  for (const b of job.bars) {
    const y = row.get(b.worker + "#" + b.slot) * LANE, x = LABEL + b.start * scale, w = Math.max(1, (b.end - b.start) * scale);
    const tip = `shard ${b.shard} attempt ${b.attempt} on ${b.worker}: ${b.outcome}, ${num(b.end - b.start, 3)} s${b.error ? " (" + b.error + ")" : ""}`;
    svg += `<rect x="${x.toFixed(1)}" y="${y + 2}" width="${w.toFixed(1)}" height="${LANE - 4}" fill="${colourOf(job, b.outcome)}" ` +
      `data-outcome="${esc(b.outcome)}" data-kind="${esc(b.kind)}" data-shard="${b.shard}" data-attempt="${b.attempt}"><title>${esc(tip)}</title></rect>`;
  }
  return svg + `<text class="tick" x="${width - 20}" y="${h - 1}" text-anchor="end">seconds since submit</text></svg>`;
}
