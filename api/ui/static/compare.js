// Compare page: each job's val loss and val top-1 overlaid, on the union of their epochs (a job
// without an epoch has a gap there). The data is the page's own JSON block (not executed).
"use strict";
(function () {
  var block = document.getElementById("compare-data");
  if (!block || !window.uPlot) return;
  var runs = JSON.parse(block.textContent).runs;
  var colors = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf"];
  var xs = [];
  runs.forEach(function (r) { r.epochs.forEach(function (e) { if (xs.indexOf(e.epoch) < 0) xs.push(e.epoch); }); });
  xs.sort(function (a, b) { return a - b; });

  function column(run, split, key) {
    var by = {};
    run.epochs.forEach(function (e) { var v = (e[split] || {})[key]; by[e.epoch] = typeof v === "number" ? v : null; });
    return xs.map(function (x) { return x in by ? by[x] : null; });
  }

  function chart(id, split, key, label) {
    var box = document.getElementById(id);
    var width = function () { return Math.max(280, Math.min(box.clientWidth || 600, 900)); };
    var opts = {
      width: width(), height: 280, scales: { x: { time: false } },
      axes: [{ label: "epoch", incrs: [1, 2, 5, 10, 20, 50, 100] }, { label: label, size: 56 }],
      series: [{ label: "epoch" }].concat(runs.map(function (r, i) {
        return { label: r.name + " " + r.id.slice(0, 8), stroke: colors[i % colors.length], width: 2,
                 points: { show: true, size: 5 }, spanGaps: false };
      })),
      legend: { live: false },
    };
    var c = new window.uPlot(opts, [xs].concat(runs.map(function (r) { return column(r, split, key); })), box);
    window.teacherUI.keyboardLegend(c);
    window.addEventListener("resize", function () { c.setSize({ width: width(), height: 280 }); });
    return c;
  }

  window.teacherCompare = {
    runs: runs.length,
    ids: runs.map(function (r) { return r.id; }),
    loss: chart("cmp-loss", "val", "loss", "loss"),
    top1: chart("cmp-top1", "val", "top1", "%"),
  };
})();
