// Shared by every dashboard page: marks that scripts run (the PNG fallbacks hide), shows times in
// the browser's time zone, and offers a conditional poll (If-None-Match -> 304 when unchanged).
"use strict";
document.documentElement.classList.add("js");

window.teacherUI = (function () {
  function parseTime(text) {
    // The API writes UTC; a value without an offset is UTC too.
    if (!text) return null;
    var t = /[zZ]|[+-]\d\d:?\d\d$/.test(text) ? text : text + "Z";
    var d = new Date(t);
    return isNaN(d.getTime()) ? null : d;
  }

  function ago(d) {
    var s = Math.max(0, (Date.now() - d.getTime()) / 1000);
    if (s < 60) return Math.round(s) + "s ago";
    if (s < 3600) return Math.round(s / 60) + "m ago";
    if (s < 86400) return (s / 3600).toFixed(1) + "h ago";
    return Math.round(s / 86400) + "d ago";
  }

  function localizeTimes(root) {
    (root || document).querySelectorAll("time[datetime]").forEach(function (el) {
      var d = parseTime(el.getAttribute("datetime"));
      if (!d) return;
      el.title = d.toLocaleString();
      el.textContent = el.classList.contains("age") ? ago(d) : d.toLocaleString();
    });
  }

  // GET url with the last ETag (first: the page's own, if given); onChange(response) only on a
  // 200. Signed out: to the sign-in page.
  function poller(url, onChange, intervalMs, accept, firstEtag) {
    var etag = firstEtag || null, stopped = false, state = { polls: 0, notModified: 0, stop: function () { stopped = true; } };
    function tick() {
      if (stopped) return;
      if (document.hidden) { setTimeout(tick, intervalMs); return; }
      var headers = { "Accept": accept || "application/json" };
      if (etag) headers["If-None-Match"] = etag;
      fetch(url, { headers: headers, cache: "no-store", credentials: "same-origin" }).then(function (r) {
        state.polls += 1;
        if (r.status === 401) { window.location.assign("/ui/signin"); stopped = true; return null; }
        if (r.status === 304) { state.notModified += 1; return null; }
        if (!r.ok) return null;
        etag = r.headers.get("ETag") || etag;
        return onChange(r);
      }).catch(function () { /* a missed poll: the next one catches up */ }).then(function () {
        if (!stopped) setTimeout(tick, intervalMs);
      });
    }
    tick();
    return state;
  }

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }

  function pct(v) { return typeof v === "number" ? v.toFixed(1) + "%" : "–"; }

  function num(v, digits) {
    if (typeof v !== "number") return v === null || v === undefined ? "–" : String(v);
    if (!isFinite(v)) return String(v);
    if (v === 0) return "0";
    digits = digits || 3;
    if (Math.abs(v) >= Math.pow(10, digits)) return Math.round(v).toLocaleString("en-US");
    return Number(v.toPrecision(digits)).toString();  // as present.num: significant digits, no trailing zeros
  }

  function duration(s) {
    if (typeof s !== "number" || !isFinite(s) || s < 0) return "–";
    s = Math.round(s);
    function two(n) { return (n < 10 ? "0" : "") + n; }
    if (s >= 3600) return Math.floor(s / 3600) + "h " + two(Math.floor(s % 3600 / 60)) + "m";
    if (s >= 60) return Math.floor(s / 60) + "m " + two(s % 60) + "s";
    return s + "s";
  }

  // uPlot's legend entries show or hide their series when clicked; this makes each one a button
  // for the keyboard too (Tab to it, Enter or Space), its state in aria-pressed.
  function keyboardLegend(chart) {
    var legend = chart.root.querySelector(".u-legend");
    if (!legend) return;
    var rows = legend.querySelectorAll(".u-series"), offset = chart.series.length - rows.length;
    function sync() {
      Array.prototype.forEach.call(rows, function (row, k) {
        if (k + offset > 0) row.setAttribute("aria-pressed", String(chart.series[k + offset].show !== false));
      });
    }
    Array.prototype.forEach.call(rows, function (row, k) {
      var i = k + offset;
      if (i < 1) return;  // the x axis' entry is no toggle
      row.tabIndex = 0;
      row.setAttribute("role", "button");
      row.addEventListener("keydown", function (e) {
        if (e.key !== "Enter" && e.key !== " ") return;
        e.preventDefault();
        chart.setSeries(i, { show: !chart.series[i].show });
        sync();
      });
    });
    legend.addEventListener("click", sync);  // after uPlot's own handler on the entry
    sync();
  }

  document.addEventListener("DOMContentLoaded", function () { localizeTimes(document); });
  return { localizeTimes: localizeTimes, poller: poller, el: el, pct: pct, num: num, duration: duration,
           parseTime: parseTime, keyboardLegend: keyboardLegend };
})();
