// The jobs list: the table's rows as the server renders them now, every 3 s; a 304 while nothing
// changed. Only the tbody is replaced, and every column has a fixed width: nothing jumps.
"use strict";
(function () {
  var table = document.getElementById("jobs");
  if (!table) return;
  var body = document.getElementById("job-rows");
  window.teacherJobs = window.teacherUI.poller(table.getAttribute("data-rows-url"), function (r) {
    return r.text().then(function (html) {
      body.innerHTML = html;  // our own template's output, escaped server-side
      window.teacherUI.localizeTimes(body);
      window.teacherJobs.updates = (window.teacherJobs.updates || 0) + 1;
    });
  }, 3000, "text/html", table.getAttribute("data-etag"));
  setInterval(function () { window.teacherUI.localizeTimes(body); }, 15000);  // ages move on
})();
