const C = JSON.parse(document.getElementById('causal-data').textContent);
const hooks = Object.keys(C.hooks), names = Object.keys(C.variables);
const fmt = x => (x === null || x === undefined) ? '–' : x.toFixed(3);
const el = (tag, attrs = {}, text) => { const e = document.createElement(tag); for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v); if (text !== undefined) e.textContent = text; return e; };
const colour = x => x === null || x === undefined ? '#eee' : `hsl(${Math.round(120 * x)}, 65%, ${88 - 30 * x}%)`;
const measures = {
  'whole vector': r => r.whole,
  'DAS (rank ≤ 16)': r => r.das_best ? r.das_best.iia : null,
  'named features': r => r.features ? r.features.iia : null,
  'isolation': r => r.features ? r.features.isolation : null,
};
let selected = { v: names[0], h: C.variables[names[0]].best.hook };

function heatmaps() {
  const box = document.getElementById('heatmaps'); box.textContent = '';
  for (const [title, get] of Object.entries(measures)) {
    const wrap = el('div'); wrap.appendChild(el('h3', {}, title));
    const t = el('table', { class: 'heat' }); const head = el('tr'); head.appendChild(el('th', {}, 'variable'));
    hooks.forEach(h => head.appendChild(el('th', {}, h))); t.appendChild(head);
    for (const v of names) {
      const tr = el('tr'); const best = C.variables[v].best.hook;
      tr.appendChild(el('td', {}, v));
      for (const h of hooks) {
        const x = get(C.variables[v].by_hook[h]);
        const td = el('td', { class: 'cell' + (selected.v === v && selected.h === h ? ' sel' : ''), title: `${v} at ${h}` }, fmt(x) + (h === best ? ' ★' : ''));
        td.style.background = colour(x);
        td.onclick = () => { selected = { v, h }; heatmaps(); detail(); };
        tr.appendChild(td);
      }
      t.appendChild(tr);
    }
    wrap.appendChild(t); box.appendChild(wrap);
  }
}

function chart(target, series, xs, xlabel) {
  const W = 420, H = 220, L = 40, B = 30, T = 10, R = 10;
  const svgNS = 'http://www.w3.org/2000/svg';
  const svg = document.createElementNS(svgNS, 'svg'); svg.setAttribute('width', W); svg.setAttribute('height', H);
  const x = i => L + (xs.length === 1 ? 0 : i * (W - L - R) / (xs.length - 1)), y = v => T + (1 - v) * (H - T - B);
  const add = (tag, attrs, text) => { const e = document.createElementNS(svgNS, tag); for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v); if (text !== undefined) e.textContent = text; svg.appendChild(e); return e; };
  for (const g of [0, 0.25, 0.5, 0.75, 0.9, 1]) { add('line', { x1: L, x2: W - R, y1: y(g), y2: y(g), stroke: g === 0.9 ? '#c66' : '#e3e6ea', 'stroke-dasharray': g === 0.9 ? '4 3' : '' }); add('text', { x: 4, y: y(g) + 4 }, g.toFixed(2)); }
  xs.forEach((v, i) => add('text', { x: x(i) - 4, y: H - 12 }, String(v)));
  add('text', { x: W / 2 - 30, y: H - 1 }, xlabel);
  for (const s of series) {
    const pts = s.values.map((v, i) => v === null ? null : `${x(i)},${y(v)}`).filter(Boolean).join(' ');
    add('polyline', { points: pts, fill: 'none', stroke: s.colour, 'stroke-width': 2 });
    s.values.forEach((v, i) => { if (v !== null) add('circle', { cx: x(i), cy: y(v), r: 3, fill: s.colour }).appendChild(document.createElementNS(svgNS, 'title')).textContent = `${s.name}: ${xs[i]} -> ${fmt(v)}`; });
  }
  target.textContent = ''; target.appendChild(svg);
  const legend = el('div', { class: 'legend' }); series.forEach(s => { const sp = el('span', {}, '■ ' + s.name); sp.style.color = s.colour; legend.appendChild(sp); }); target.appendChild(legend);
}

function detail() {
  const { v, h } = selected, r = C.variables[v].by_hook[h], f = r.features;
  document.getElementById('detail-title').textContent = `${v} at ${h}` + (C.variables[v].best.hook === h ? ' (where it is mediated)' : '');
  const fc = document.getElementById('chart-features');
  if (f) chart(fc, [{ name: 'chosen by attribution', values: f.iia_by_size, colour: '#3b6fd8' }, { name: 'random features', values: f.random_iia_by_size, colour: '#999' }], f.iia_by_size.map((_, i) => i + 1), '|S|');
  else fc.textContent = 'no SAE at this hook';
  const ranks = Object.keys(r.das);
  chart(document.getElementById('chart-rank'), [{ name: 'DAS', values: ranks.map(k => r.das[k]), colour: '#2a9d5c' }, { name: 'whole vector', values: ranks.map(() => r.whole), colour: '#d08a2c' }], ranks, 'rank r');
  const t = document.getElementById('features'); t.textContent = '';
  const head = el('tr'); ['feature', 'label (best F1)', 'F1', 'effect alone', 'top inputs'].forEach(c => head.appendChild(el('th', {}, c))); t.appendChild(head);
  if (!f) return;
  const labels = C.hooks[h].features || {};
  f.chosen.forEach((id, i) => {
    const info = labels[String(id)] || {}, tr = el('tr');
    tr.appendChild(el('td', {}, String(id))); tr.appendChild(el('td', {}, info.label || '–')); tr.appendChild(el('td', {}, fmt(info.f1)));
    tr.appendChild(el('td', {}, fmt(f.effects[i])));
    tr.appendChild(el('td', {}, (info.top || []).slice(0, 3).map(t => `[${t.input.join(',')}] ${fmt(t.act)}`).join('  ')));
    t.appendChild(tr);
  });
}

function circuit() {
  const box = document.getElementById('circuit'), c = C.circuit;
  if (!c) { box.textContent = 'No SAE at any hook: no circuit.'; return; }
  box.appendChild(el('p', {}, `At ${c.hook}, the features of ${c.variables.join(', ')} (${c.size} of the SAE's), every other feature mean-ablated, reproduce the model's rounded output on ${(100 * c.share).toFixed(1)}% of ${c.rows} held-out rows (${(100 * c.share_without_error).toFixed(1)}% with the SAE's error mean-ablated too).`));
  const t = el('table'); const head = el('tr'); ['cut', 'hook', 'features', 'share', 'without error'].forEach(x => head.appendChild(el('th', {}, x))); t.appendChild(head);
  for (const h of hooks) { const hc = C.hooks[h].circuit; if (!hc) continue; for (const [name, cut] of Object.entries(hc.cuts)) { const tr = el('tr'); [name, h, cut.size, fmt(cut.share), fmt(cut.share_without_error)].forEach(x => tr.appendChild(el('td', {}, String(x)))); t.appendChild(tr); } }
  box.appendChild(t);
}

heatmaps(); detail(); circuit();
