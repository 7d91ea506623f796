// The per-epoch curves shared by the job page (job.js, redrawn live) and an analysis's report
// (analysis.js, drawn once): loss (train, val) and top-1/top-5 (train, val) per epoch, from
// entries shaped as a job's history.json epochs ({"epoch", "train": {...}, "val": {...}}), with
// the points of failed or warned checks (present.flagged_points) drawn as dots on their metric.
"use strict";
window.teacherCurves = (function () {
  var U = window.teacherUI;
  var EPOCH_CHARTS = {
    loss: { box: "chart-loss", yLabel: "loss", series: [
      { label: "train loss", key: "train.loss", color: "#1f77b4" },
      { label: "val loss", key: "val.loss", color: "#d62728" }] },
    acc: { box: "chart-acc", yLabel: "%", series: [
      { label: "train top-1", key: "train.top1", color: "#1f77b4" },
      { label: "val top-1", key: "val.top1", color: "#d62728" },
      { label: "val top-5", key: "val.top5", color: "#2ca02c", dash: [6, 4] }] },
  };

  function chartWidth(box) { return Math.max(280, Math.min(box.clientWidth || 600, 900)); }

  function value(epoch, path) {
    var v = epoch;
    path.split(".").forEach(function (k) { v = v && typeof v === "object" ? v[k] : null; });
    return typeof v === "number" && isFinite(v) ? v : null;
  }

  function flaggedFor(series, flags) {
    var keys = series.map(function (s) { return s.key; });
    return flags.filter(function (f) { return keys.indexOf(f.metric) >= 0; });
  }

  function makeChart(id, series, yLabel, flags) {
    var box = document.getElementById(id);
    var marked = flaggedFor(series, flags);
    series = series.concat(marked.map(function (f) {  // one series of dots per flagged check and metric
      var twice = marked.filter(function (g) { return g.id === f.id && g.status === f.status; }).length > 1;
      return { label: f.id + " (" + f.status + (twice ? ", " + f.metric : "") + ")", flags: [f],
               color: f.status === "fail" ? "#c62828" : "#b7791f" };
    }));
    var opts = {
      width: chartWidth(box), height: 260,
      scales: { x: { time: false } },
      axes: [{ label: "epoch", incrs: [1, 2, 5, 10, 20, 50, 100] }, { label: yLabel, size: 56 }],
      series: [{ label: "epoch" }].concat(series.map(function (s) {
        if (s.flags) {  // points only: a red dot on each flagged epoch's value
          return { label: s.label, stroke: s.color, fill: s.color, width: 0, paths: function () { return null; },
                   points: { show: true, size: 12, fill: s.color, stroke: s.color } };
        }
        return { label: s.label, stroke: s.color, width: 2, points: { show: true, size: 6 }, dash: s.dash };
      })),
      legend: { live: false },
    };
    var chart = new window.uPlot(opts, [[]].concat(series.map(function () { return []; })), box);
    U.keyboardLegend(chart);
    return { chart: chart, series: series, box: box, flagged: marked.length };
  }

  // The loss and accuracy charts for these flags, into ``charts`` (its old ones destroyed: uPlot's
  // series are fixed at creation, so a new set of flagged checks means new charts).
  function build(charts, flags) {
    Object.keys(EPOCH_CHARTS).forEach(function (name) {
      if (charts[name]) charts[name].chart.destroy();
      var spec = EPOCH_CHARTS[name];
      charts[name] = makeChart(spec.box, spec.series, spec.yLabel, flags);
    });
    return charts;
  }

  // One point per epoch; a flag series has its metric's value at its flagged epochs, else a gap.
  function draw(charts, epochs) {
    Object.keys(EPOCH_CHARTS).forEach(function (name) {
      var c = charts[name];
      if (!c) return;
      var data = [epochs.map(function (e) { return e.epoch; })];
      c.series.forEach(function (s) {
        data.push(epochs.map(function (e) {
          if (!s.flags) return value(e, s.key);
          var hit = s.flags.filter(function (f) { return f.epochs.indexOf(e.epoch) >= 0; })[0];
          return hit ? value(e, hit.metric) : null;
        }));
      });
      c.chart.setData(data);
      c.box.setAttribute("data-points", String(epochs.length));
    });
  }

  // Charts follow the window's width (each entry of ``charts``: {chart, box}).
  function followWidth(charts) {
    window.addEventListener("resize", function () {
      Object.keys(charts).forEach(function (name) {
        var c = charts[name];
        c.chart.setSize({ width: chartWidth(c.box), height: 260 });
      });
    });
  }

  // A page's JSON data block (<script type="application/json">: data, never run), else ``fallback``.
  function dataBlock(id, fallback) {
    var block = document.getElementById(id);
    return block ? JSON.parse(block.textContent) : fallback;
  }

  return { value: value, chartWidth: chartWidth, build: build, draw: draw, followWidth: followWidth,
           dataBlock: dataBlock };
})();
