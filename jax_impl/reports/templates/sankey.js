const COLORS = ['#4e79a7', '#f28e2b', '#59a14f', '#e15759', '#76b7b2'];
const FADED = ['rgba(78,121,167,0.35)', 'rgba(242,142,43,0.35)', 'rgba(89,161,79,0.35)',
               'rgba(225,87,89,0.35)'];
const GAP = 2, MIN_LABEL_PX = 8;
const MARGIN = {l: 10, r: 10, t: 50, b: 10};
function trace(v, scale) {
  // Stack each column top-down in the given order at `scale` px per unit of energy, with
  // gaps of up to GAP px where the column has room, so nodes never overlap or leave the
  // plot; nodes thinner than MIN_LABEL_PX keep their name for hover only.
  const height = document.getElementById('plot').clientHeight - MARGIN.t - MARGIN.b;
  const used = [0, 0, 0, 0, 0], count = [0, 0, 0, 0, 0];
  v.flow.forEach((f, i) => { used[v.column[i]] += f * scale; count[v.column[i]] += 1; });
  const gap = used.map((u, c) => count[c] > 1 ? Math.max(0, Math.min(GAP, (height - u) / (count[c] - 1))) : 0);
  const x = [], y = [], top = [0, 0, 0, 0, 0];
  v.flow.forEach((f, i) => {
    const c = v.column[i], h = f * scale;
    x[i] = 0.001 + 0.998 * c / 4;
    y[i] = (top[c] + h / 2) / height;
    top[c] += h + gap[c];
  });
  return {
    type: 'sankey', arrangement: 'fixed', valueformat: '.3f',
    node: {label: v.label.map((l, i) => v.flow[i] * scale >= MIN_LABEL_PX ? l : ''), customdata: v.label,
           x, y, pad: 0, thickness: 16, color: v.column.map(c => COLORS[c]), line: {width: 0},
           hovertemplate: `%{customdata}<br>${v.measure || 'summed energy'} %{value:.3f}<extra></extra>`},
    link: {source: v.source, target: v.target, value: v.value,
           customdata: v.source.map((s, i) => `${v.label[s]} → ${v.label[v.target[i]]}`),
           color: v.source.map(s => FADED[v.column[s]]),
           hovertemplate: `%{customdata}<br>${v.measure || 'summed energy'} %{value:.3f}<extra></extra>`},
  };
}
function drawnScale() {
  // Plotly sizes nodes by its own column assignment (by link depth, not our columns):
  // read its px-per-energy off the drawn nodes.
  let best = null;
  document.querySelectorAll('.sankey-node').forEach(el => {
    const n = el.__data__.node;
    if (!best || n.value > best.value) best = n;
  });
  return best && best.value > 0 ? (best.y1 - best.y0) / best.value : 0;
}
const HEADS = ['index combination<br>p1-p2', 'value combination<br>a[p1]-b[p2]',
               'neuron (top-k by activation)', 'SAE feature (top-k)', 'expected output'];
// A view may carry its own column heads (the causal view: variable -> named feature -> output).
const layout = heads => ({
  margin: MARGIN, font: {size: 11},
  annotations: heads.map((h, c) => ({text: `<b>${h}</b>`, x: c / 4, y: 1.0, yref: 'paper',
    xref: 'paper', yanchor: 'bottom', xanchor: c === 0 ? 'left' : c === 4 ? 'right' : 'center',
    showarrow: false, font: {size: 12}})).filter(a => a.text !== '<b></b>'),
});
const filter = document.getElementById('filter');
function show() {
  const v = REPORT.views[filter.value];
  document.getElementById('shown').textContent =
    `${v.label.length} nodes, ${v.source.length} links`;
  // The first pass only lets plotly size the nodes (its scale depends on the links alone);
  // the second places them at that scale. data-shown tells scripts and tests it is done.
  const plot = document.getElementById('plot');
  delete plot.dataset.shown;
  if (!v.source.length) {  // plotly's sankey fails on an empty graph
    return Plotly.react(plot, [], {annotations: [{text: 'no row with energy > 0', showarrow: false}],
                                   xaxis: {visible: false}, yaxis: {visible: false}}, CONFIG)
      .then(() => { plot.dataset.shown = filter.value; });
  }
  const LAYOUT = layout(v.heads || HEADS);
  return Plotly.react(plot, [trace(v, 0)], LAYOUT, CONFIG)
    .then(() => Plotly.react(plot, [trace(v, drawnScale())], LAYOUT, CONFIG))
    .then(() => { plot.dataset.shown = filter.value; });
}
filter.addEventListener('change', show);
document.getElementById('reset').addEventListener('click', () => { filter.value = 'all'; show(); });
show();
