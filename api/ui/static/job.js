// The job page, live: polls live.json with If-None-Match (an unchanged job is a 304), redraws the
// curves (uPlot, one point per finished epoch), the summary, the log tail and the checkpoints.
// Every value goes in through textContent: nothing from the job is parsed as HTML, except the
// integrity section, which is the server's own template output (escaped by Jinja), fetched from
// integrity.json when an epoch finished or the status changed.
"use strict";
(function () {
  var page = document.getElementById("job-page");
  if (!page) return;
  var U = window.teacherUI, el = U.el;
  var state = window.teacherJob = { epochs: 0, status: null, updates: 0, charts: {} };

  var C = window.teacherCurves, value = C.value, chartWidth = C.chartWidth;

  // Checks that failed or warned at given epochs of a metric (the integrity report's evidence);
  // replaced when integrity.json brings a newer report.
  state.flags = C.dataBlock("job-flags", []);
  state.lastEpochs = [];

  // Two y axes: the first series on the left ("y"), the others on the right ("y2").
  function makeDualChart(id, xLabel, left, right) {
    var box = document.getElementById(id);
    var opts = {
      width: chartWidth(box), height: 260,
      scales: { x: { time: false }, y: {}, y2: {} },
      axes: [{ label: xLabel }, { label: left.label, scale: "y", size: 64 },
             { label: right.label, scale: "y2", side: 1, size: 56, grid: { show: false } }],
      series: [{ label: xLabel },
               { label: left.label, stroke: left.color, width: 2, scale: "y", points: { show: true, size: 4 } },
               { label: right.label, stroke: right.color, width: 2, scale: "y2", points: { show: true, size: 4 } }],
      legend: { live: false },
    };
    var chart = new window.uPlot(opts, [[], [], []], box);
    U.keyboardLegend(chart);
    return { chart: chart, box: box };
  }

  function drawSteps(steps) {
    var c = state.charts.steps;
    if (!c || !changed("steps", steps)) return;
    c.chart.setData([steps.map(function (s) { return s.batch; }), steps.map(function (s) { return s.loss; }),
                     steps.map(function (s) { return s.top1; })]);
    state.steps = steps.length;
    var cap = document.getElementById("steps-caption");
    if (cap) cap.textContent = steps.length ? "Epoch " + steps[0].epoch + ", training steps (running mean loss, top-1 %)"
                                             : "Current epoch, training steps (none logged yet)";
  }

  function drawLr(epochs) {
    var c = state.charts.lr;
    if (!c) return;
    c.chart.setData([epochs.map(function (e) { return e.epoch; }), epochs.map(function (e) { return value(e, "lr"); }),
                     epochs.map(function (e) { return value(e, "train.throughput"); })]);
  }

  function drawCharts(epochs) {
    state.lastEpochs = epochs;
    C.draw(state.charts, epochs);
    state.epochs = epochs.length;
  }

  function badge(kind, text, title) {
    var b = el("span", "badge " + kind + "-" + text, text);
    if (title) b.title = title;
    return b;
  }

  function replace(id, node) {
    var target = document.getElementById(id);
    if (!target) return;
    target.textContent = "";
    target.appendChild(node);
  }

  function progress(job) {
    var p = job.progress || {}, wrap = el("div", "prog"), bar = el("progress");
    bar.max = 100;
    bar.value = typeof p.percent === "number" ? p.percent : (job.status === "succeeded" ? 100 : 0);
    var text = (p.epoch != null && p.epochs ? "epoch " + p.epoch + "/" + p.epochs + " · " : "") + U.pct(p.percent);
    if (job.status === "running" && typeof p.eta_s === "number") text += " · ETA " + U.duration(p.eta_s);
    wrap.appendChild(bar);
    wrap.appendChild(el("span", "prog-text", text));
    return wrap;
  }

  function valTop1(job, epochs) {
    var f = ((job.result || {}).final || {}).val || {};
    if (typeof f.top1 === "number") return f.top1;
    var live = (((job.progress || {}).latest) || {})["val.top1"];
    if (typeof live === "number") return live;
    return epochs.length ? value(epochs[epochs.length - 1], "val.top1") : null;  // history is ahead of the row
  }

  function timeCell(iso) {
    if (!iso) return "–";
    var t = el("time", null, iso);
    t.setAttribute("datetime", iso);
    return t;
  }

  function resumePoint(p) {
    if (!p || typeof p !== "object") return "–";
    var parts = ["epoch " + p.epoch + " done", "step " + p.step];
    if (p.batch) parts.push(p.batch + " batches in");
    return parts.join(", ") + (p.checkpoint ? ", from " + p.checkpoint : "");
  }

  function timeline(job) {
    if (!changed("timeline", [job.timeline, job.status, job.finished_at])) return;
    var body = document.getElementById("attempt-rows");
    if (!body) return;
    body.textContent = "";
    var attempts = job.timeline || [];
    if (!attempts.length) {
      var tr0 = el("tr"), td0 = el("td", "muted", "Not started yet.");
      td0.colSpan = 8; tr0.appendChild(td0); body.appendChild(tr0);
    }
    attempts.forEach(function (a) {
      var tr = el("tr");
      var ended = (a.cause || "running") + (a.stop ? " (" + a.stop + ")" : "") + (a.exit_code != null ? " exit " + a.exit_code : "");
      [["Attempt", a.number], ["Started", timeCell(a.started_at)], ["Ended", timeCell(a.ended_at)], ["How it ended", ended],
       ["Resumed from", resumePoint(a.resumed_from)], ["Work lost", U.duration(a.lost_s)], ["Worker", a.worker || "–"],
       ["Reason", a.reason || "–"]].forEach(function (c) {
        var td = el("td");
        td.setAttribute("data-label", c[0]);
        if (c[1] instanceof Node) td.appendChild(c[1]); else td.textContent = String(c[1]);
        tr.appendChild(td);
      });
      body.appendChild(tr);
    });
    var events = document.getElementById("timeline-events");
    if (events && job.finished_at && events.children.length < 2) {
      var li = el("li");
      li.appendChild(timeCell(job.finished_at));
      li.appendChild(document.createTextNode(" " + job.status + (job.failure_reason ? ": " + job.failure_reason : "")));
      events.appendChild(li);
    }
    U.localizeTimes(document.getElementById("h-timeline").parentNode);
  }

  function summary(job, finished, epochs) {
    replace("job-status", badge("st", job.status));
    replace("job-progress", progress(job));
    document.getElementById("job-top1").textContent = U.pct(valTop1(job, epochs));
    var fails = document.getElementById("job-failures");
    if (fails) fails.textContent = (job.failures == null ? "–" : job.failures) + " / " + (job.interruptions == null ? "–" : job.interruptions);
    var i = job.integrity;
    replace("job-integrity", i && i.verdict ? badge("iv", i.verdict, (i.failed || []).concat(i.warnings || []).join(", "))
                                           : el("span", "muted", "–"));
    document.getElementById("job-attempts").textContent = job.attempts + " / " + job.max_attempts;
    document.getElementById("job-failure").textContent = job.failure_reason || "–";
    [["job-started", job.started_at], ["job-finished", job.finished_at]].forEach(function (pair) {
      if (!pair[1] || !changed(pair[0], pair[1])) return;
      replace(pair[0], timeCell(pair[1]));
      U.localizeTimes(document.getElementById(pair[0]));
    });
    var cancel = document.getElementById("cancel-box");
    if (cancel && finished) cancel.hidden = true;
    state.status = job.status;
  }

  function epochRows(epochs) {
    if (!changed("epochs", epochs)) return;
    var body = document.getElementById("epoch-rows");
    body.textContent = "";
    epochs.forEach(function (e) {
      var tr = el("tr");
      [e.epoch, U.num(value(e, "train.loss"), 4), U.num(value(e, "val.loss"), 4), U.pct(value(e, "train.top1")),
       U.pct(value(e, "val.top1")), U.pct(value(e, "val.top5")), U.num(value(e, "lr"), 3),
       U.num(value(e, "train.throughput"), 3), U.duration(e.epoch_time_s)]
        .forEach(function (v) { tr.appendChild(el("td", null, v)); });
      body.appendChild(tr);
    });
  }

  function size(n) {
    if (typeof n !== "number") return "–";
    if (n < 1024) return n + " B";
    var units = ["KB", "MB", "GB"], i = -1;
    do { n /= 1024; i++; } while (n >= 1024 && i < units.length - 1);
    return n.toFixed(1) + " " + units[i];
  }

  var shown = {};
  function changed(part, value) {
    // Redraw a part only when its data changed: links keep focus, nothing flickers.
    var key = JSON.stringify(value);
    if (shown[part] === key) return false;
    shown[part] = key;
    return true;
  }

  function checkpoints(list) {
    if (!changed("checkpoints", list)) return;
    var body = document.getElementById("ckpt-rows");
    body.textContent = "";
    if (!list.length) {
      var tr0 = el("tr"), td0 = el("td", "muted", "None yet.");
      td0.colSpan = 5; tr0.appendChild(td0); body.appendChild(tr0);
      return;
    }
    list.forEach(function (c) {
      var tr = el("tr"), a = el("a", null, c.name), td = el("td");
      function cell(label, text) { var d = el("td", null, text); d.setAttribute("data-label", label); return d; }
      a.href = c.url; a.setAttribute("download", "");
      td.setAttribute("data-label", "Name"); td.appendChild(a); tr.appendChild(td);
      tr.appendChild(cell("Epoch", c.epoch == null ? "–" : c.epoch));
      tr.appendChild(cell("Size", size(c.size)));
      var sha = cell("sha256"); sha.appendChild(el("code", "sha", c.sha256 || "–")); tr.appendChild(sha);
      tr.appendChild(cell("Val top-1", U.pct((c.metrics || {})["val.top1"])));
      body.appendChild(tr);
    });
  }

  function logTail(lines) {
    if (!changed("log", lines)) return;
    var pre = document.getElementById("log");
    var atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
    pre.textContent = lines.length ? lines.join("\n") + "\n" : "";
    if (atBottom) pre.scrollTop = pre.scrollHeight;
  }

  // The epoch charts, built for the current flags: a new set of flagged checks rebuilds them
  // (uPlot's series are fixed at creation), in their boxes, which keep their height meanwhile.
  function epochCharts() { C.build(state.charts, state.flags); }

  function flagKey(list) {
    return JSON.stringify(list.map(function (f) { return [f.id, f.status, f.metric, f.epochs]; }));
  }

  function applyFlags(list) {
    if (flagKey(list) === flagKey(state.flags)) return;
    state.flags = list;
    if (!window.uPlot) return;
    epochCharts();
    drawCharts(state.lastEpochs);
  }

  // The integrity section: fetched (If-None-Match) only when the live view shows a new epoch or
  // status, so a running job's report is analysed once per epoch, not once per poll.
  var integ = document.getElementById("integrity");
  var integrity = state.integrity = {
    url: integ && integ.getAttribute("data-url"), etag: integ && integ.getAttribute("data-etag"),
    key: integ ? integ.getAttribute("data-epochs") + "|" + integ.getAttribute("data-status") : null,
    fetching: false, again: false, updates: 0, notModified: 0, last: null };

  function refreshIntegrity(epochs, status) {
    var key = epochs.length + "|" + status;
    if (!integrity.url || key === integrity.key) return;
    integrity.key = key;
    if (integrity.fetching) { integrity.again = true; return; }
    fetchIntegrity();
  }

  function fetchIntegrity() {
    integrity.fetching = true;
    var headers = { "Accept": "application/json" };
    if (integrity.etag) headers["If-None-Match"] = integrity.etag;
    fetch(integrity.url, { headers: headers, cache: "no-store", credentials: "same-origin" }).then(function (r) {
      if (r.status === 304) { integrity.notModified += 1; return null; }
      if (!r.ok) { integrity.key = null; return null; }  // asked again after the next live update
      integrity.etag = r.headers.get("ETag") || integrity.etag;
      return r.json().then(showIntegrity);
    }).catch(function () { integrity.key = null; }).then(function () {
      integrity.fetching = false;
      if (integrity.again) { integrity.again = false; fetchIntegrity(); }
    });
  }

  function showIntegrity(body) {
    document.getElementById("integrity-body").innerHTML = body.html;  // our own template's output, escaped server-side
    document.getElementById("flag-note-box").innerHTML = body.flag_note_html;
    if (body.finished) document.getElementById("integrity-when").textContent = "(the final report)";
    applyFlags(body.flags || []);
    integrity.last = body;
    integrity.updates += 1;
  }

  if (window.uPlot) {
    epochCharts();
    state.charts.steps = makeDualChart("chart-steps", "batch", { label: "loss", color: "#1f77b4" },
                                       { label: "top-1 %", color: "#2ca02c" });
    state.charts.lr = makeDualChart("chart-lr", "epoch", { label: "lr", color: "#9467bd" },
                                    { label: "img/s", color: "#ff7f0e" });
  }
  C.followWidth(state.charts);
  var log = document.getElementById("log");
  log.scrollTop = log.scrollHeight;

  state.poll = U.poller(page.getAttribute("data-live-url"), function (r) {
    return r.json().then(function (body) {
      summary(body.job, body.finished, body.epochs);
      timeline(body.job);
      drawCharts(body.epochs);
      refreshIntegrity(body.epochs, body.job.status);
      drawSteps(body.steps || []);
      drawLr(body.epochs);
      epochRows(body.epochs);
      logTail(body.log);
      checkpoints(body.checkpoints);
      state.updates += 1;
      state.finished = body.finished;
      if (body.finished) state.poll.stop();
    });
  }, 2000);
})();
