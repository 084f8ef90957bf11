// The circuit page: everything is drawn from the embedded circuit.json. Text from the data only ever goes in through
// textContent / setAttribute (never innerHTML), so a label cannot become markup.
const D = JSON.parse(document.getElementById('circuit-data').textContent) || {};
const $ = (id) => document.getElementById(id);
const NS = 'http://www.w3.org/2000/svg';
const ORDER = ['input', 'layer1', 'layer2', 'layer3', 'output'];
const COLOURS = { input: '#cbd5e0', layer1: '#90cdf4', layer2: '#9ae6b4', layer3: '#fbd38d', output: '#d6bcfa' };
const MAX_OPTIONS = 300;  // the picker lists at most this many matches; the number box reaches every graph
const arr = (x) => (Array.isArray(x) ? x : []);
const num = (x) => (typeof x === 'number' && isFinite(x) ? x : null);
const fmt = (x, d = 3) => (num(x) === null ? '–' : x.toFixed(d));
const pct = (x) => (num(x) === null ? '–' : (100 * x).toFixed(1) + '%');
const short = (s, n = 22) => (s.length > n ? s.slice(0, n - 1) + '…' : s);
const text = (x) => (x === null || x === undefined ? '' : String(x));
const inputText = (x) => (Array.isArray(x) ? '[' + x.join(',') + ']' : text(x));
function el(tag, attrs = {}, content) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (content !== undefined) e.textContent = content;
  return e;
}
function sv(parent, tag, attrs = {}, content) {
  const e = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (content !== undefined) e.textContent = content;
  parent.appendChild(e);
  return e;
}
function table(head, rows) {
  const t = el('table'), tr = el('tr');
  head.forEach((h, i) => tr.appendChild(el('th', { class: i === 0 ? 'l' : '' }, h)));
  t.appendChild(tr);
  for (const r of rows) {
    const row = el('tr');
    r.forEach((c, i) => {
      const cell = typeof c === 'object' && c !== null ? c : { v: c };
      row.appendChild(el('td', { class: (i === 0 ? 'l ' : '') + (cell.cls || '') }, text(cell.v)));
    });
    t.appendChild(row);
  }
  return t;
}

const graphs = arr(D.graphs).filter((g) => g && typeof g === 'object');
const features = D.features && typeof D.features === 'object' ? D.features : {};
const groups = D.global && Array.isArray(D.global.groups) ? D.global.groups.filter((g) => g && typeof g === 'object') : null;
const keys = graphs.map((g, i) =>
  `#${i} ${inputText(g.input)} ${arr(g.input).join(' ')} target=${text(g.target)}`.toLowerCase());
const state = { i: 0, hl: null, nodes: new Map() };

// ---------------------------------------------------------------- picker

function picker() {
  const q = $('q').value.trim().toLowerCase(), sel = $('graphs');
  const hits = [];
  for (let i = 0; i < graphs.length; i++) if (!q || keys[i].includes(q)) hits.push(i);
  sel.textContent = '';
  for (const i of hits.slice(0, MAX_OPTIONS)) {
    const g = graphs[i];
    const o = el('option', { value: String(i) },
      `#${i}  ${inputText(g.input)}  target ${text(g.target)}  output ${fmt(g.output)}  completeness ${fmt(g.completeness)}`);
    if (i === state.i) o.selected = true;
    sel.appendChild(o);
  }
  $('matches').textContent = hits.length > MAX_OPTIONS ? `${MAX_OPTIONS} of ${hits.length} matches shown`
    : `${hits.length} match${hits.length === 1 ? '' : 'es'}`;
}

function setHash() {
  const h = `#graph=${state.i}` + (state.hl === null ? '' : `&feature=${encodeURIComponent(state.hl)}`);
  if (location.hash !== h) history.replaceState(null, '', h);
}

function go(i) {
  if (!graphs.length) return;
  state.i = Math.max(0, Math.min(graphs.length - 1, Math.round(num(+i) === null ? 0 : +i)));
  setHash();
  show();
}

function fromHash() {
  const p = new URLSearchParams(location.hash.replace(/^#/, ''));
  if (p.has('feature')) state.hl = p.get('feature') || null;
  const i = +p.get('graph');
  state.i = graphs.length ? Math.max(0, Math.min(graphs.length - 1, Number.isInteger(i) ? i : 0)) : 0;
  show();
}

// ---------------------------------------------------------------- summary

function summary(g) {
  const nodes = arr(g.nodes), edges = arr(g.edges), checks = arr(g.checks).filter((c) => c && typeof c === 'object');
  const features_ = num(g.n_features) !== null ? g.n_features
    : nodes.filter((n) => n && n.feature !== null && n.feature !== undefined && n.layer !== 'input').length;
  const agree = checks.filter((c) => c.agrees === true).length;
  $('graph-title').textContent = `Graph #${state.i} of ${graphs.length}: input ${inputText(g.input)}`;
  const cards = [['output', fmt(g.output)], ['target', text(g.target) || '–'], ['completeness', fmt(g.completeness)],
    ['feature nodes', text(features_)], ['nodes', text(nodes.length)], ['edges', text(edges.length)],
    ['error nodes', text(nodes.filter((n) => n && String(n.id).startsWith('error/')).length)],
    ['interventions agree', checks.length ? `${agree} / ${checks.length} (${pct(agree / checks.length)})` : '–']];
  const box = $('cards'); box.textContent = '';
  for (const [k, v] of cards) {
    const c = el('div', { class: 'card' });
    c.appendChild(el('b', {}, v)); c.appendChild(document.createTextNode(k)); box.appendChild(c);
  }
  const cb = $('checks'); cb.textContent = '';
  if (!checks.length) { cb.appendChild(el('p', { class: 'muted' }, 'No intervention checks for this graph.')); return; }
  cb.appendChild(el('h3', {}, 'Intervention checks: ablating a node changes the output by its attributed amount'));
  cb.appendChild(table(['node', 'label', 'attributed', 'measured', 'agrees'], checks.map((c) => {
    const n = state.nodes.get(text(c.node));
    return [text(c.node), n ? text(n.label) : '', fmt(c.attributed), fmt(c.measured),
      { v: c.agrees === true ? 'yes' : c.agrees === false ? 'no' : '–', cls: c.agrees === true ? 'yes' : 'no' }];
  })));
}

// ---------------------------------------------------------------- graph

function draw(g) {
  const box = $('graph'); box.textContent = '';
  const nodes = [];  // a repeated id is drawn once, as its first node
  for (const n of arr(g.nodes)) {
    if (!n || n.id === undefined || n.id === null || state.nodes.has(String(n.id))) continue;
    state.nodes.set(String(n.id), n);
    nodes.push(n);
  }
  if (!nodes.length) { box.appendChild(el('p', { class: 'muted' }, 'This graph has no nodes.')); return; }
  const layers = ORDER.slice(0, 4);
  for (const n of nodes) if (!ORDER.includes(text(n.layer)) && !layers.includes(text(n.layer))) layers.push(text(n.layer));
  layers.push('output');
  const cols = layers.map((l) => nodes.filter((n) => text(n.layer) === l));
  const isError = (n) => String(n.id).startsWith('error/');
  const infl = (n) => Math.abs(num(n.influence) || 0);
  cols.forEach((c, k) => c.sort((a, b) => (isError(a) - isError(b))
    || (layers[k] === 'input' ? (num(a.feature) || 0) - (num(b.feature) || 0) : infl(b) - infl(a))
    || (String(a.id) < String(b.id) ? -1 : 1)));
  const W = Math.max(900, box.clientWidth || 1100), gap = 34, top = 44;
  const H = top + Math.max(...cols.map((c) => c.length), 1) * gap + 16;
  const x = (k) => 90 + k * (W - 260) / (layers.length - 1);
  const maxI = Math.max(...nodes.map(infl), 0);
  const radius = (n) => (maxI > 0 ? 4 + 12 * Math.sqrt(infl(n) / maxI) : 6);
  const pos = new Map();
  cols.forEach((c, k) => c.forEach((n, j) => pos.set(String(n.id),
    { x: x(k), y: top + (H - top - 16 - c.length * gap) / 2 + (j + 0.5) * gap, r: radius(n), k })));

  const svg = sv(box, 'svg', { width: W, height: H, role: 'img', 'aria-label': 'attribution graph' });
  layers.forEach((l, k) => sv(svg, 'text', { class: 'col-head', x: x(k), y: 18, 'text-anchor': 'middle' }, l));
  const edges = arr(g.edges).filter((e) => e && pos.has(text(e.source)) && pos.has(text(e.target)));
  const w = (e) => Math.abs(num(e.weight) || 0), maxW = Math.max(...edges.map(w), 0);
  edges.sort((a, b) => w(a) - w(b));  // the strongest on top
  const eg = sv(svg, 'g', { class: 'edges' }), byNode = new Map();
  for (const e of edges) {
    const s = pos.get(text(e.source)), t = pos.get(text(e.target)), f = maxW > 0 ? w(e) / maxW : 0;
    const x1 = s.x + s.r, x2 = t.x - t.r, mid = (x1 + x2) / 2;
    const p = sv(eg, 'path', { class: 'edge', d: `M${x1},${s.y} C${mid},${s.y} ${mid},${t.y} ${x2},${t.y}`,
      stroke: (num(e.weight) || 0) < 0 ? '#c53030' : '#2b6cb0', 'stroke-width': (0.6 + 5.4 * f).toFixed(2),
      opacity: (0.12 + 0.78 * f).toFixed(3), 'data-source': text(e.source), 'data-target': text(e.target) });
    for (const id of [text(e.source), text(e.target)]) { if (!byNode.has(id)) byNode.set(id, []); byNode.get(id).push(p); }
  }
  const ng = sv(svg, 'g', { class: 'nodes' });
  for (const n of nodes) {
    const id = String(n.id), p = pos.get(id), err = isError(n);
    const gn = sv(ng, 'g', { class: 'node' + (err ? ' error' : ''), 'data-id': id });
    if (err) sv(gn, 'rect', { x: p.x - p.r, y: p.y - p.r, width: 2 * p.r, height: 2 * p.r });
    else sv(gn, 'circle', { cx: p.x, cy: p.y, r: p.r, fill: COLOURS[text(n.layer)] || '#e2e8f0' });
    const left = layers[p.k] === 'input';
    sv(gn, 'text', { class: 'nlabel', x: left ? p.x - p.r - 4 : p.x + p.r + 4, y: p.y + 4,
      'text-anchor': left ? 'end' : 'start' }, short(text(n.label) || id));
    gn.addEventListener('mouseenter', (ev) => {
      svg.classList.add('focus'); (byNode.get(id) || []).forEach((e) => e.classList.add('lit')); tip(n, ev);
    });
    gn.addEventListener('mousemove', place);
    gn.addEventListener('mouseleave', () => {
      svg.classList.remove('focus'); (byNode.get(id) || []).forEach((e) => e.classList.remove('lit'));
      $('tip').hidden = true;
    });
    gn.addEventListener('click', () => highlight(state.hl === id ? null : id));
  }
}

function place(ev) {
  const t = $('tip'), w = t.offsetWidth, h = t.offsetHeight;
  t.style.left = Math.max(4, Math.min(ev.clientX + 14, window.innerWidth - w - 8)) + 'px';
  t.style.top = Math.max(4, Math.min(ev.clientY + 14, window.innerHeight - h - 8)) + 'px';
}

function tip(n, ev) {
  const t = $('tip'), id = String(n.id), f = features[id];
  t.textContent = '';
  t.appendChild(el('strong', {}, text(n.label) || id));
  const feature = n.feature === null || n.feature === undefined ? '' : ` · feature ${text(n.feature)}`;
  t.appendChild(el('div', { class: 'muted' }, `${id} · ${text(n.layer)}${feature}`));
  t.appendChild(el('div', {}, `activation ${fmt(n.activation)} · influence ${fmt(n.influence)}`));
  if (id.startsWith('error/')) {
    t.appendChild(el('div', { class: 'muted' }, `what the transcoder writing ${text(n.layer)} misses on this input`));
  }
  if (f && typeof f === 'object') {
    t.appendChild(el('div', {}, `atlas label: ${text(f.label) || '–'}`));
    const variable = f.variable === null || f.variable === undefined ? 'unassigned' : text(f.variable);
    t.appendChild(el('div', {}, `variable: ${variable} · in ${pct(f.graphs)} of graphs`));
    const top = arr(f.top_inputs).filter((x) => x && typeof x === 'object').slice(0, 5);
    if (top.length) {
      t.appendChild(el('div', {}, 'top inputs:'));
      const ol = el('ol');
      top.forEach((x) => ol.appendChild(el('li', {}, `${inputText(x.input)} → ${fmt(x.activation)}`)));
      t.appendChild(ol);
    }
  }
  t.hidden = false;
  place(ev);
}

// ---------------------------------------------------------------- global view and highlight

function globalView() {
  const box = $('groups'); box.textContent = '';
  if (!groups) { box.appendChild(el('p', { class: 'muted' }, 'No global view in this document.')); return; }
  const n = D.global && num(D.global.graphs) !== null ? ` (over ${D.global.graphs} graphs)` : '';
  box.appendChild(el('p', { class: 'muted' }, `Share of graphs each feature appears in${n}; bold: in the current graph.`));
  const wrap = el('div', { class: 'groups' });
  for (const g of groups) {
    const d = el('div', { class: 'group' });
    d.appendChild(el('h3', {}, g.variable === null || g.variable === undefined ? 'unassigned' : text(g.variable)));
    const ul = el('ul');
    for (const f of arr(g.features).filter((x) => x && x.id !== undefined && x.id !== null)) {
      const id = String(f.id), li = el('li', { 'data-id': id }, `${id}  ${text(f.label)}  · ${pct(f.graphs)}`);
      li.addEventListener('click', () => highlight(state.hl === id ? null : id));
      ul.appendChild(li);
    }
    d.appendChild(ul); wrap.appendChild(d);
  }
  box.appendChild(wrap);
}

function highlight(id) {
  state.hl = id;
  setHash();
  for (const gn of document.querySelectorAll('#graph .node')) gn.classList.toggle('hl', gn.getAttribute('data-id') === id);
  for (const li of document.querySelectorAll('#groups li')) {
    li.classList.toggle('present', state.nodes.has(li.getAttribute('data-id')));
    li.classList.toggle('sel', li.getAttribute('data-id') === id);
  }
  const note = $('hl-note');
  if (id === null) note.textContent = '';
  else if (state.nodes.has(id)) note.textContent = `Highlighted: ${id}.`;
  else {
    note.textContent = `${id} is not in graph #${state.i}.`;
    const has = (g) => arr(g.nodes).some((n) => n && String(n.id) === id);
    let j = -1;
    for (let k = 1; k <= graphs.length && j < 0; k++) {
      if (has(graphs[(state.i + k) % graphs.length])) j = (state.i + k) % graphs.length;
    }
    if (j >= 0 && j !== state.i) {
      const b = el('button', { type: 'button', id: 'hl-next' }, `show graph #${j}, the next with it`);
      b.addEventListener('click', () => go(j));
      note.appendChild(document.createTextNode(' ')); note.appendChild(b);
    }
  }
}

// ---------------------------------------------------------------- replacement model

function replacement() {
  const box = $('replacement-body'), r = D.replacement;
  box.textContent = '';
  if (!r || typeof r !== 'object') {
    box.appendChild(el('p', { class: 'muted' }, 'No replacement model in this document.'));
    return;
  }
  const layers = arr(r.layers).filter((l) => l && typeof l === 'object');
  box.appendChild(el('h3', {}, 'Transcoders, one per MLP layer'));
  box.appendChild(table(['layer', 'reads → writes', 'd_in → d_out', 'architecture', 'dict size', 'skip', 'FVU', 'L0'],
    layers.map((l) => [text(l.name), `${text(l.reads)} → ${text(l.writes)}`, `${text(l.d_in)} → ${text(l.d_out)}`,
      text(l.architecture), text(l.dict_size), l.skip === true ? 'yes' : l.skip === false ? 'no' : '–',
      fmt(l.fvu, 4), fmt(l.l0, 1)])));
  const t = r.test && typeof r.test === 'object' ? r.test : null;
  if (!t) return;
  box.appendChild(el('h3', {}, `Test split${num(t.rows) !== null ? ` (${t.rows} rows)` : ''}`));
  const rows = [['MLP', 'mlp'], ['replacement (no error terms)', 'replacement'],
    ['replacement with error terms', 'replacement_with_errors']];
  box.appendChild(table(['model', 'MSE', 'exact match'], rows.map(([name, k]) => {
    const m = t[k] && typeof t[k] === 'object' ? t[k] : {};
    return [name, fmt(m.mse, 5), pct(m.exact_match)];
  })));
}

// ---------------------------------------------------------------- wiring

function show() {
  state.nodes = new Map();
  $('tip').hidden = true;
  const g = graphs[state.i];
  if (!g) {
    $('graph-title').textContent = 'This document has no graphs.';
    $('cards').textContent = ''; $('checks').textContent = ''; $('graph').textContent = '';
  } else {
    draw(g);
    summary(g);
  }
  $('graph-n').value = String(state.i);
  const sel = $('graphs');
  for (const o of sel.options) o.selected = +o.value === state.i;
  highlight(state.hl);
}

$('share').textContent = fmt(D.share, 2);
$('graph-count').textContent = `of ${graphs.length} (0 to ${Math.max(graphs.length - 1, 0)})`;
$('graph-n').max = String(Math.max(graphs.length - 1, 0));
$('graph-n').addEventListener('change', () => go($('graph-n').value));
$('prev').addEventListener('click', () => go(state.i - 1));
$('next').addEventListener('click', () => go(state.i + 1));
$('q').addEventListener('input', picker);
$('graphs').addEventListener('change', () => go($('graphs').value));
window.addEventListener('hashchange', fromHash);
replacement();
globalView();
picker();
fromHash();
document.body.setAttribute('data-ready', '1');
