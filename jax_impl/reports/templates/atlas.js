const A = JSON.parse(document.getElementById('atlas-data').textContent);
const $ = (id) => document.getElementById(id);
const fmt = (x, d = 3) => (x === null || x === undefined) ? '–' : (typeof x === 'number' ? x.toFixed(d) : String(x));
const esc = (s) => String(s).replace(/[&<>"]/g, (c) => ({'&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;'}[c]));
const COLS = [
  ['id', 'id', 0], ['label', 'label', -1], ['family', 'family', -1], ['f1', 'F1', 3],
  ['auroc', 'AUROC', 3], ['density', 'density', 4], ['ablation_in', 'abl. in', 3],
  ['ablation_out', 'abl. out', 3], ['steer_gain', 'steer gain', 2], ['consistent', 'consistent', -1],
];
let sortKey = 'f1', sortDir = -1, selected = null;

function summary() {
  const s = A.summary, m = A.metrics;
  const cards = [
    ['live features', `${s.live} / ${s.features}`],
    ['dead fraction', fmt(m.dead_fraction)],
    ['monosemantic (F1 ≥ ' + A.settings.min_f1 + ')', `${s.monosemantic} (${fmt(100 * s.monosemantic_share, 1)}%)`],
    ['F1 ≥ 0.9', fmt(100 * s.share_f1_0_9, 1) + '%'],
    ['causally consistent', `${s.consistent} of ${s.live}`],
    ['explained variance', fmt(m.explained_variance)], ['L0', fmt(m.l0, 1)],
    ['MSE recovered', fmt(m.mse_recovered)], ['MLP MSE clean / spliced', `${fmt(m.mse)} / ${fmt(m.spliced_mse)}`],
  ];
  $('cards').innerHTML = cards.map(([k, v]) => `<div class="card"><b>${v}</b>${esc(k)}</div>`).join('');
  $('families').innerHTML = '<tr><th class="l">family</th><th>concepts</th><th>covered</th><th>mean best F1</th><th>monosemantic features</th></tr>' +
    Object.entries(s.families).map(([f, r]) => `<tr><td class="l">${f}</td><td>${r.concepts}</td><td>${r.covered}</td><td>${fmt(r.mean_best_f1)}</td><td>${r.monosemantic_features}</td></tr>`).join('');
  $('concepts').innerHTML = '<tr><th class="l">concept</th><th class="l">family</th><th>rows</th><th>best feature</th><th>F1</th></tr>' +
    A.concepts.map((c) => `<tr><td class="l">${esc(c.concept)}</td><td class="l">${c.family}</td><td>${c.support}</td>` +
      `<td><a href="#" data-f="${c.best_feature}">#${c.best_feature}</a></td><td>${fmt(c.best_f1)}</td></tr>`).join('');
  $('concepts').onclick = (e) => { const f = e.target.dataset.f; if (f !== undefined) { e.preventDefault(); select(+f); } };
}

function table() {
  const q = $('q').value.trim().toLowerCase(), mono = $('mono').checked;
  let rows = A.features.filter((f) => (!mono || f.monosemantic) &&
    (!q || ('#' + f.id + ' ' + f.label + ' ' + f.family).toLowerCase().includes(q)));
  rows.sort((a, b) => {
    const x = a[sortKey], y = b[sortKey];
    if (x === y) return a.id - b.id;
    if (x === null) return 1; if (y === null) return -1;
    return (x < y ? -1 : 1) * sortDir;
  });
  $('count').textContent = `${rows.length} features`;
  $('head').innerHTML = '<tr>' + COLS.map(([k, name, d]) =>
    `<th class="${d < 0 ? 'l' : ''}" data-k="${k}">${name}${k === sortKey ? (sortDir < 0 ? ' ▼' : ' ▲') : ''}</th>`).join('') + '</tr>';
  $('body').innerHTML = rows.map((f) => `<tr data-f="${f.id}" class="${f.id === selected ? 'sel' : ''}">` + COLS.map(([k, , d]) => {
    const v = f[k];
    if (k === 'consistent') return `<td class="l ${v ? 'yes' : 'no'}">${v ? 'yes' : 'no'} <span class="muted">(${f.evidence})</span></td>`;
    if (k === 'id') return `<td>#${v}</td>`;
    return `<td class="${d < 0 ? 'l' : ''}">${d < 0 ? esc(v) : fmt(v, d)}</td>`;
  }).join('') + '</tr>').join('');
}

function histogram(f) {
  const W = 400, H = 120, n = f.hist.length, top = Math.max(...f.hist, 1), bw = W / n;
  const bars = f.hist.map((c, i) => `<rect x="${i * bw + 1}" y="${H - (H * c) / top}" width="${bw - 2}" height="${(H * c) / top}" fill="#42a5f5"><title>${fmt(i * f.hist_max / n)}–${fmt((i + 1) * f.hist_max / n)}: ${c} rows</title></rect>`).join('');
  return `<svg width="${W + 50}" height="${H + 30}" role="img"><g transform="translate(40,5)">${bars}` +
    `<line x1="0" y1="${H}" x2="${W}" y2="${H}" stroke="#999"/><text x="0" y="${H + 18}" font-size="11">0</text>` +
    `<text x="${W}" y="${H + 18}" font-size="11" text-anchor="end">${fmt(f.hist_max)}</text>` +
    `<text x="-4" y="10" font-size="11" text-anchor="end">${top}</text></g></svg>`;
}

function inputCells(x) {
  // Each column is x_dim cells: values then its pointer; mark the pointed value and the pointer.
  const xd = A.shape.x_dim, out = [];
  for (let c = 0; c < A.shape.y_dim; c++) {
    const col = x.slice(c * xd, (c + 1) * xd), p = col[xd - 1];
    out.push(col.map((v, j) => j === xd - 1 ? `<i>${v}</i>` : (j === p ? `<span class="hit">${v}</span>` : v)).join(' '));
  }
  return out.join(' | ');
}

function select(id) {
  const f = A.features.find((g) => g.id === id);
  selected = id;
  table();
  if (!f) { $('detail').innerHTML = `<h2>Feature #${id}</h2><p>Dead on these rows: it never fires.</p>`; return; }
  const why = f.evidence === 'steering'
    ? `Clamped on, on ${f.steer_rows} rows where its concept is false, the output followed the target the task gives if <b>${esc(f.label)}</b> were true with gain ${fmt(f.steer_gain, 2)} (1 = exactly, 0 = not at all; consistent when ≥ ${A.settings.min_gain}).`
    : `No counterfactual target for this label; removing it changed the output by ${fmt(f.ablation_in)} on its concept's rows and ${fmt(f.ablation_out)} elsewhere (consistent when ≥ 0.05 and ≥ 2× elsewhere).`;
  $('detail').innerHTML = `<h2>Feature #${f.id}: ${esc(f.label)} <span class="muted">(${f.family})</span></h2>
    <p>F1 ${fmt(f.f1)} (precision ${fmt(f.precision)}, recall ${fmt(f.recall)}), AUROC ${fmt(f.auroc)};
    fires on ${fmt(100 * f.density, 2)}% of rows, mean activation ${fmt(f.mean_act)}, max ${fmt(f.max_act)}.
    ${f.monosemantic ? '<span class="yes">monosemantic</span>' : '<span class="no">not monosemantic</span>'}.</p>
    <p>Causal: <span class="${f.consistent ? 'yes' : 'no'}">${f.consistent ? 'consistent' : 'not consistent'}</span> with its label. ${why}
    Ablation: mean |Δ output| ${fmt(f.ablation_in)} where the concept holds, ${fmt(f.ablation_out)} where it does not.</p>
    <h2>Activation histogram (rows where it fires)</h2>${histogram(f)}
    <h2>Concept scores</h2><table><tr><th class="l">concept</th><th>precision</th><th>recall</th><th>F1</th><th>AUROC</th></tr>` +
    f.scores.map((s) => `<tr><td class="l">${esc(s.concept)}</td><td>${fmt(s.precision)}</td><td>${fmt(s.recall)}</td>` +
      `<td><span class="bar" style="width:${60 * (s.f1 || 0)}px"></span> ${fmt(s.f1)}</td><td>${fmt(s.auroc)}</td></tr>`).join('') + '</table>' +
    `<h2>Top-activating inputs</h2><table><tr><th>row</th><th class="l">input (pointed value highlighted, pointer in italics)</th><th>target</th><th>MLP</th><th>act.</th></tr>` +
    f.top.map((t) => `<tr><td>${t.row}</td><td class="l">${inputCells(t.input)}</td><td>${fmt(t.target, 0)}</td><td>${fmt(t.prediction, 2)}</td><td>${fmt(t.act)}</td></tr>`).join('') + '</table>';
}

$('q').oninput = table;
$('mono').onchange = table;
$('head').onclick = (e) => {
  const k = e.target.closest('th')?.dataset.k; if (!k) return;
  if (k === sortKey) sortDir = -sortDir; else { sortKey = k; sortDir = (k === 'id' || k === 'label' || k === 'family') ? 1 : -1; }
  table();
};
$('body').onclick = (e) => { const tr = e.target.closest('tr'); if (tr) select(+tr.dataset.f); };
summary();
table();
if (A.features.length) select([...A.features].sort((a, b) => b.f1 - a.f1)[0].id);
