const R = REPORT;
const hover = R.rows.map((out, i) => R.cols.map((idx, j) => {
  const lines = R.pairs[i][j].map((p, r) =>
    `${String(r + 1).padStart(2)}. neuron ${p[0]} ↔ feature ${p[1]}: ${p[2].toFixed(3)}`);
  return `<b>expected output ${out}, pointers ${idx}</b><br>` +
    `${R.samples[i][j]} samples, total energy ${R.z[i][j].toFixed(2)}<br>` +
    `<b>top neuron ↔ feature pairs (summed energy)</b><br>` +
    (lines.length ? lines.join('<br>') : 'no samples');
}));
Plotly.newPlot('plot', [{
  type: 'heatmap', x: R.cols, y: R.rows.map(String), z: R.z, customdata: hover,
  hovertemplate: '%{customdata}<extra></extra>', texttemplate: '%{z:.1f}',
  textfont: {size: 11}, xgap: 1, ygap: 1,
  colorscale: [[0, '#f7fbff'], [0.2, '#c6dbef'], [0.5, '#6baed6'], [0.8, '#2171b5'], [1, '#08306b']],
  colorbar: {title: {text: 'summed energy', side: 'right'}},
}], {
  margin: {l: 70, r: 30, t: 20, b: 60},
  xaxis: {title: {text: 'index combination p1-p2 (pointer into first column - pointer into last column)'},
          type: 'category'},
  yaxis: {title: {text: 'expected output |a[p1] - b[p2]|'}, type: 'category'},
  hoverlabel: {align: 'left', bgcolor: 'white', font: {family: 'monospace', size: 12}},
}, CONFIG);
