const S = REPORT.stats;
const select = document.getElementById('pairs');
S.neuron.forEach((n, i) => {
  const o = document.createElement('option');
  o.value = i;
  o.textContent = `${String(i + 1).padStart(4)}. n${String(n).padEnd(3)} ↔ ` +
    `f${String(S.feature[i]).padEnd(4)} μ ${S.mean[i].toFixed(3)} ` +
    `σ ${S.std[i].toFixed(3)} rows ${S.count[i]}`;
  select.appendChild(o);
});
function curve(i) {
  // Normal density with the pair's mean and std, drawn over mean +- 4 std.
  const mu = S.mean[i], sd = S.std[i], x = [], y = [];
  for (let j = 0; j <= 160; j++) {
    const v = mu + sd * (j / 20 - 4);
    x.push(v);
    y.push(Math.exp(-0.5 * ((v - mu) / sd) ** 2) / (sd * Math.sqrt(2 * Math.PI)));
  }
  return {type: 'scatter', mode: 'lines', x, y, fill: 'tozeroy', line: {width: 2},
          name: `n${S.neuron[i]} ↔ f${S.feature[i]}`,
          hovertemplate: `neuron ${S.neuron[i]} ↔ feature ${S.feature[i]}<br>` +
            `mean ${mu.toFixed(4)}, std ${sd.toFixed(4)}, rows ${S.count[i]}<br>` +
            'energy %{x:.4f}, density %{y:.3f}<extra></extra>'};
}
function draw() {
  const chosen = Array.from(select.selectedOptions, o => +o.value);
  document.getElementById('shown').textContent = `${chosen.length} of ${S.neuron.length} pairs drawn`;
  return Plotly.react('plot', chosen.map(curve), {
    margin: {l: 70, r: 20, t: 20, b: 60}, hovermode: 'closest',
    xaxis: {title: {text: 'energy of one row (neuron activation × feature activation)'}},
    yaxis: {title: {text: 'probability density (normal fit)'}},
    legend: {title: {text: 'neuron ↔ feature'}},
  }, CONFIG);
}
function reset() {
  Array.from(select.options).forEach((o, i) => { o.selected = i < REPORT.default_shown; });
  return draw();
}
select.addEventListener('change', draw);
document.getElementById('reset').addEventListener('click', reset);
reset();
