// The jobs list: the table's rows as the server renders them now, every 3 s; a 304 while nothing
// changed. Only the tbody is replaced, and every column has a fixed width: nothing jumps.
"use strict";
(function () {
  var table = document.getElementById("jobs");
  if (!table) return;
  var body = document.getElementById("job-rows");

  // A keyboard user's place in the table survives a refresh: the link that had focus (a job's
  // name, a tag chip) is focused again in the new rows, found by its row's job and its href.
  function focusedLink() {
    var a = document.activeElement;
    if (!a || !body.contains(a) || !a.getAttribute("href")) return null;
    var tr = a.closest("tr[data-job]");
    return tr ? { job: tr.getAttribute("data-job"), href: a.getAttribute("href") } : null;
  }

  function refocus(keep) {
    if (!keep) return;
    var links = body.querySelectorAll('tr[data-job="' + CSS.escape(keep.job) + '"] a[href]');
    for (var i = 0; i < links.length; i++) {
      if (links[i].getAttribute("href") === keep.href) { links[i].focus({ preventScroll: true }); return; }
    }
  }
  window.teacherJobs = window.teacherUI.poller(table.getAttribute("data-rows-url"), function (r) {
    return r.text().then(function (html) {
      var keep = focusedLink();
      body.innerHTML = html;  // our own template's output, escaped server-side
      refocus(keep);
      window.teacherUI.localizeTimes(body);
      window.teacherJobs.updates = (window.teacherJobs.updates || 0) + 1;
    });
  }, 3000, "text/html", table.getAttribute("data-etag"));
  setInterval(function () { window.teacherUI.localizeTimes(body); }, 15000);  // ages move on
})();
