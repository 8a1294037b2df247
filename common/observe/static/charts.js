// The cluster page's live charts, drawn by uPlot (vendored in /static/vendor) from the
// dashboard's one-a-second samples (/api/cluster). `charts` holds each uPlot by name.
const charts = {};
const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];

// name -> title, unit, and the series it draws: [label, values] pairs from the history
const CHARTS = {
  rate: ["Shards merged per second (tasks/s at chunk_size=1)", "/s", h => [["merged /s", h.rate]]],
  slots: ["Slots busy, of slots alive", "slots", h => [["busy", h.busy], ["alive", h.slots]]],
  queued: ["Queued shards (waiting for a slot)", "shards", h => [["queued", h.queued]]],
  cpu: ["CPU per worker (% of one core, agent and children)", "%", h => perWorker(h, "cpu", v => v)],
  memory: ["Memory per worker (MiB, agent and children)", "MiB", h => perWorker(h, "rss", v => v == null ? null : v / 1048576)],
  heartbeat: ["Heartbeat age per worker (s since its last beat)", "s", h => perWorker(h, "age", v => v)],
};

function perWorker(h, key, f) {
  return Object.entries(h.workers).map(([w, s]) => [w, s[key].map(f)]);
}

function options(name, title, unit, labels, width) {
  return {
    title, width, height: 200,
    series: [{}, ...labels.map((label, i) => ({label, stroke: PALETTE[i % PALETTE.length], width: 2, spanGaps: false,
      value: (u, v) => v == null ? "–" : v.toFixed(unit === "s" ? 3 : 1) + " " + unit}))],
    axes: [{}, {label: unit, size: 60}],
    scales: {y: {range: (u, min, max) => [0, Math.max(1, max * 1.1)]}},
    legend: {live: true},
  };
}

function boxes(into) {  // every chart's card first, so each takes its grid cell's width
  for (const name of Object.keys(CHARTS)) {
    if (document.getElementById("chart-" + name)) continue;
    const box = document.createElement("div");
    box.className = "chart card";
    box.id = "chart-" + name;
    into.appendChild(box);
  }
}

function drawCharts(into, h) {
  boxes(into);
  for (const [name, [title, unit, pick]] of Object.entries(CHARTS)) {
    const series = pick(h), labels = series.map(s => s[0]), data = [h.t, ...series.map(s => s[1])];
    let u = charts[name];
    if (u && u.series.length - 1 === labels.length && labels.every((l, i) => u.series[i + 1].label === l)) {
      u.setData(data);
      continue;
    }
    if (u) u.destroy();
    const box = document.getElementById("chart-" + name);
    const width = Math.max(360, box.clientWidth - 24);  // the grid cell's width, less its padding
    charts[name] = new uPlot(options(name, title, unit, labels, width), data, box);
  }
}
