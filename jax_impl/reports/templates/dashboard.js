// The feature dashboard: the index (dashboard_data/index.js) and, on demand, one data file per page of features
// (dashboard_data/page-NNNNN.js), each added as a <script> element that calls monosemDashboard.page(...): a page
// opened from file:// may not fetch() its neighbours in Chromium, but it may load scripts. At most MAX_PAGES pages
// are held at once. Every text from the data (the user's labels above all) goes in through textContent.
(function () {
  "use strict";
  var MAX_PAGES = 8, MAX_RESULTS = 100;
  var D = window.monosemDashboard = {};
  var index = null, pages = new Map(), pending = new Map(), current = -1, listPage = -1, searchToken = 0;
  var $ = function (id) { return document.getElementById(id); };

  function el(tag, text, cls) {
    var e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (cls) e.className = cls;
    return e;
  }
  function fmt(v, digits) {
    if (v === null || v === undefined) return "n/a";
    if (v === 0) return "0";
    var a = Math.abs(v);
    return a >= 1e4 || a < 1e-3 ? v.toExponential(2) : v.toPrecision(digits || 4).replace(/\.?0+$/, "");
  }
  function pageName(p) { var s = String(p); while (s.length < 5) s = "0" + s; return "page-" + s + ".js"; }

  D.index = function (doc) { index = doc; start(); };
  D.page = function (p, doc) {
    pages.delete(p); pages.set(p, doc);  // newest last: the oldest is dropped first
    while (pages.size > MAX_PAGES) pages.delete(pages.keys().next().value);
    var waiting = pending.get(p);
    if (waiting) { pending.delete(p); waiting.forEach(function (w) { w.resolve(doc); }); }
  };
  D.heldPages = function () { return Array.from(pages.keys()); };
  // A page of features: from memory or its data file, loaded once however many ask for it at the same time.
  function loadPage(p) {
    if (pages.has(p)) { var doc = pages.get(p); pages.delete(p); pages.set(p, doc); return Promise.resolve(doc); }
    return new Promise(function (resolve, reject) {
      if (pending.has(p)) { pending.get(p).push({ resolve: resolve, reject: reject }); return; }
      pending.set(p, [{ resolve: resolve, reject: reject }]);
      var s = document.createElement("script");
      s.src = index.data + "/" + pageName(p);
      s.onload = function () { s.remove(); };
      s.onerror = function () {
        s.remove();
        var waiting = pending.get(p) || []; pending.delete(p);
        waiting.forEach(function (w) { w.reject(new Error("cannot load " + s.src)); });
      };
      document.body.appendChild(s);
    });
  }
  function pageOf(id) { return Math.floor(id / index.per_page); }
  function featureOf(doc, id) { return doc.features[id - doc.first]; }

  function start() {
    var a = index.activations, s = index.sae;
    $("summary").textContent = index.features + " features of the " + s.architecture + " SAE " + s.name +
      " over " + a.rows + " rows x " + a.width + " of " + a.file + "; " + index.dead + " never fire. " +
      index.pages + " pages of " + index.per_page + " features, loaded as you go.";
    $("prev").onclick = function () { if (listPage > 0) showList(listPage - 1); };
    $("next").onclick = function () { if (listPage < index.pages - 1) showList(listPage + 1); };
    $("search").onsubmit = function (e) { e.preventDefault(); search($("q").value); };
    window.addEventListener("hashchange", fromHash);
    fromHash();
  }
  function fromHash() {
    var m = /feature=(\d+)/.exec(location.hash);
    var id = m ? Number(m[1]) : 0;
    show(id < index.features ? id : 0);
  }
  function go(id) { location.hash = "feature=" + id; }

  function labelText(cells) { return cells.join(" | "); }
  function showList(p) {
    listPage = p;
    $("page-info").textContent = "page " + (p + 1) + " of " + index.pages;
    return loadPage(p).then(function (doc) {
      if (listPage !== p) return;
      var list = $("list"); list.textContent = "";
      doc.features.forEach(function (f) {
        var li = el("li"); li.dataset.id = f.id;
        li.appendChild(el("span", "#" + f.id, "fid"));
        li.appendChild(el("span", fmt(f.density, 3) + "  " + (f.top.length ? labelText(f.top[0][2]) : "(never fires)")));
        li.onclick = function () { go(f.id); };
        if (f.id === current) li.className = "current";
        list.appendChild(li);
      });
    });
  }

  function show(id) {
    current = id;
    var p = pageOf(id);
    return loadPage(p).then(function (doc) {
      if (current !== id) return;
      render(featureOf(doc, id));
      if (listPage !== p) return showList(p);
      Array.prototype.forEach.call($("list").children, function (li) {
        li.className = Number(li.dataset.id) === id ? "current" : "";
      });
    }, function (err) { $("feature").textContent = String(err.message); });
  }

  function card(parent, name, value) {
    var c = el("div", null, "card"); c.appendChild(el("b", value)); c.appendChild(el("span", name, "muted"));
    parent.appendChild(c);
  }
  function histogram(f) {
    var ns = "http://www.w3.org/2000/svg", w = 480, h = 120, pad = 22;
    var svg = document.createElementNS(ns, "svg");
    svg.setAttribute("width", w); svg.setAttribute("height", h + pad); svg.setAttribute("class", "histogram");
    var top = Math.max.apply(null, f.hist.concat([1])), bw = w / f.hist.length;
    f.hist.forEach(function (c, i) {
      var r = document.createElementNS(ns, "rect"), bh = Math.max(c ? 1 : 0, h * Math.sqrt(c / top));
      r.setAttribute("x", i * bw + 1); r.setAttribute("width", Math.max(bw - 2, 1));
      r.setAttribute("y", h - bh); r.setAttribute("height", bh); r.setAttribute("class", "hbar");
      var t = document.createElementNS(ns, "title");
      t.textContent = fmt(f.max * i / f.hist.length) + " to " + fmt(f.max * (i + 1) / f.hist.length) + ": " + c + " rows";
      r.appendChild(t); svg.appendChild(r);
    });
    [[0, "0", "start"], [w, fmt(f.max), "end"]].forEach(function (a) {
      var t = document.createElementNS(ns, "text");
      t.setAttribute("x", a[0]); t.setAttribute("y", h + 15); t.setAttribute("text-anchor", a[2]);
      t.textContent = a[1]; svg.appendChild(t);
    });
    return svg;
  }
  function render(f) {
    var box = $("feature"); box.textContent = "";
    box.appendChild(el("h2", "Feature " + f.id));
    var cards = el("div", null, "cards"); box.appendChild(cards);
    card(cards, "density (share of rows)", fmt(f.density));
    card(cards, "log10 density", fmt(f.log10_density, 3));
    card(cards, "rows it fires on", f.fires);
    card(cards, "mean when firing", fmt(f.mean));
    card(cards, "max activation", fmt(f.max));
    box.appendChild(el("h3", "Activation histogram (rows where it fires; bar height: square root of the count)"));
    box.appendChild(f.fires ? histogram(f) : el("p", "This feature never fires on these rows.", "muted"));
    box.appendChild(el("h3", "Top-activating rows"));
    if (f.top.length) {
      var table = el("table", null, "top"), head = el("tr");
      ["row", "activation", ""].concat(index.columns).forEach(function (c) { head.appendChild(el("th", c)); });
      table.appendChild(head);
      f.top.forEach(function (t) {
        var tr = el("tr", null, "top-row");
        tr.appendChild(el("td", t[0], "num")); tr.appendChild(el("td", fmt(t[1]), "num"));
        var bar = el("td"), span = el("span", null, "bar"); span.style.width = Math.round(80 * t[1] / f.max) + "px";
        bar.appendChild(span); tr.appendChild(bar);
        t[2].forEach(function (cell) { tr.appendChild(el("td", cell, "label")); });
        table.appendChild(tr);
      });
      box.appendChild(table);
    } else box.appendChild(el("p", "none", "muted"));
    box.appendChild(el("h3", "Nearest features by decoder cosine"));
    var nb = el("div", null, "neighbours");
    f.nbrs.forEach(function (n) {
      var b = el("button", "#" + n[0] + "  " + fmt(n[1], 3), "neighbour"); b.type = "button"; b.dataset.id = n[0];
      b.onclick = function () { go(n[0]); };
      nb.appendChild(b);
    });
    box.appendChild(nb);
    document.body.setAttribute("data-shown", String(f.id));  // what is on screen (tests wait for it)
  }

  // An id goes to that feature; any other text is looked for in the labels of every feature's top rows, page after
  // page (each page loaded, scanned and let go: memory stays at MAX_PAGES pages), the matches listed as found.
  function search(text) {
    var token = ++searchToken, q = text.trim(), results = $("results"), status = $("status");
    results.textContent = "";
    if (/^\d+$/.test(q)) {
      var id = Number(q);
      if (id < index.features) { status.textContent = ""; go(id); }
      else status.textContent = "no feature " + q + " (ids 0 to " + (index.features - 1) + ")";
      return Promise.resolve();
    }
    if (!q) { status.textContent = ""; return Promise.resolve(); }
    var needle = q.toLowerCase(), found = 0;
    function scan(p) {
      if (token !== searchToken) return Promise.resolve();
      if (p >= index.pages || found >= MAX_RESULTS) {
        status.textContent = found + (found >= MAX_RESULTS ? "+" : "") + " feature(s) with \u201c" + q + "\u201d in a top row's label";
        return Promise.resolve();
      }
      status.textContent = "searching page " + (p + 1) + " of " + index.pages + "\u2026";
      return loadPage(p).then(function (doc) {
        if (token !== searchToken) return;
        doc.features.forEach(function (f) {
          if (found >= MAX_RESULTS) return;
          for (var i = 0; i < f.top.length; i++) {
            var label = labelText(f.top[i][2]);
            if (label.toLowerCase().indexOf(needle) >= 0) {
              var li = el("li", null, "result"); li.dataset.id = f.id;
              li.appendChild(el("span", "#" + f.id, "fid")); li.appendChild(el("span", label));
              li.onclick = function () { go(f.id); };
              results.appendChild(li); found++;
              return;
            }
          }
        });
        return scan(p + 1);
      });
    }
    return scan(0);
  }
  D.search = search;
})();
