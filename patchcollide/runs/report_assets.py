"""The report pages' inline style and script: one page per directory, opened from disk, with
nothing fetched from a network (``report._page`` puts both in every page)."""

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:1.5em 2em;color:#1f2328;background:#fff}
h1{font-size:1.45em;margin:.2em 0 .6em}h2{font-size:1.15em;margin-top:1.8em;border-bottom:1px solid #d0d7de}
code{font-family:ui-monospace,Menlo,Consolas,monospace}
.banner{background:#fde68a;border:2px solid #b45309;color:#451a03;padding:.6em 1em;font-weight:700;margin:1em 0}
.damaged{background:#fff5f5;border:2px solid #cf222e;color:#a40e26;padding:.6em 1em;margin:1em 0;overflow-wrap:anywhere}
dl.summary{display:grid;grid-template-columns:max-content auto;gap:2px 1.2em;margin:0}
dl.summary dt{font-weight:600}dl.summary dd{margin:0;overflow-wrap:anywhere}
table{border-collapse:collapse;margin:.6em 0}
th,td{border:1px solid #d0d7de;padding:3px 8px;text-align:left;vertical-align:middle}
th{background:#f6f8fa}td.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
table.vertices{font-size:.86em}table.vertices th,table.vertices td{padding:2px 4px}
table.kv th{font-weight:600}table.kv td{overflow-wrap:anywhere}
#jobs th[data-key]{cursor:pointer;user-select:none}#jobs th[data-key]:hover{background:#eaeef2}
th[aria-sort=ascending]::after{content:" \\25B2"}th[aria-sort=descending]::after{content:" \\25BC"}
figure{display:inline-block;margin:0 1.2em 1.2em 0;vertical-align:top}figure.wide{display:block}
figcaption{font-size:.85em;color:#57606a;max-width:28em}
img{image-rendering:pixelated;max-width:100%;height:auto;border:1px solid #d0d7de;background:#fff}
td.thumb img{max-height:56px;max-width:220px;width:auto;height:auto}
.scroll{overflow-x:auto;max-width:100%;margin:.6em 0}.scroll>table{margin:0}
.verdict{font-weight:600;font-size:1.05em;padding:.45em .9em;margin:.4em 0 .8em;border-left:6px solid #6e7781;background:#f6f8fa}
.verdict.v-ok{border-color:#1a7f37}.verdict.v-bad{border-color:#cf222e}
.status{display:inline-block;padding:0 7px;border-radius:4px;color:#fff;font-weight:600}
.status.st-done{background:#1a7f37}.status.st-failed{background:#cf222e}
.status.st-pending{background:#6e7781}.status.st-interrupted{background:#bc4c00}.status.st-busy{background:#0969da}.status.st-invalid{background:#9a6700}
.status.st-other{background:#424a53}tr.st-failed td{background:#fff5f5}
td.err{color:#a40e26;min-width:18em;max-width:28em;overflow-wrap:anywhere}.missing{color:#6e7781;font-style:italic}
.counts .status{margin-right:.4em}.hint{color:#57606a;font-size:.9em}
footer{margin-top:2.5em;color:#6e7781;font-size:.8em}
"""

JS = """
// Self-check for tests and for people: how many images are on the page and how many loaded.
window.addEventListener("load", function () {
  var imgs = document.images, ok = 0;
  for (var i = 0; i < imgs.length; i++) if (imgs[i].complete && imgs[i].naturalWidth > 0) ok++;
  document.body.setAttribute("data-images-total", imgs.length);
  document.body.setAttribute("data-images-loaded", ok);
});
(function () {
  // Sortable jobs table: click a header (or Enter on it) to sort by it, again to reverse.
  // Numbers sort as numbers; empty cells go last in both directions; ties keep file order.
  var table = document.getElementById("jobs");
  if (!table) return;
  var body = table.tBodies[0], heads = table.tHead.rows[0].cells, k;
  function value(row, i, num) {
    var v = row.cells[i].getAttribute("data-v");
    if (v === null || v === "") return null;
    if (!num) return v.toLowerCase();
    v = parseFloat(v);
    return isNaN(v) ? null : v;
  }
  function sortBy(th) {
    var i = th.cellIndex, num = th.getAttribute("data-type") === "num";
    var dir = th.getAttribute("aria-sort") === "ascending" ? -1 : 1;
    for (var j = 0; j < heads.length; j++) {
      if (heads[j].hasAttribute("data-key")) heads[j].setAttribute("aria-sort", "none");
    }
    th.setAttribute("aria-sort", dir > 0 ? "ascending" : "descending");
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = value(a, i, num), y = value(b, i, num), tie = a.getAttribute("data-order") - b.getAttribute("data-order");
      if (x === null || y === null) return x === y ? tie : (x === null ? 1 : -1);
      return x < y ? -dir : x > y ? dir : tie;
    });
    rows.forEach(function (r) { body.appendChild(r); });
    table.setAttribute("data-sort-key", th.getAttribute("data-key"));
    table.setAttribute("data-sort-dir", dir > 0 ? "asc" : "desc");
  }
  for (k = 0; k < heads.length; k++) {
    if (!heads[k].hasAttribute("data-key")) continue;
    heads[k].addEventListener("click", function () { sortBy(this); });
    heads[k].addEventListener("keydown", function (e) {
      if (e.key === "Enter" || e.key === " ") { e.preventDefault(); sortBy(this); }
    });
  }
  // report.html#sort=KEY opens sorted ascending, #sort=-KEY descending (by clicking the header).
  var m = /(?:^#|&)sort=(-?)([^&]+)/.exec(location.hash);
  if (m) for (k = 0; k < heads.length; k++) {
    var key = m[2];
    try { key = decodeURIComponent(key); } catch (e) { /* keep it as written */ }
    if (heads[k].getAttribute("data-key") !== key) continue;
    heads[k].click();
    if (m[1]) heads[k].click();
  }
})();
"""
