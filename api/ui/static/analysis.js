// An analysis's report page: the job page's loss and accuracy curves (curves.js), drawn once from
// the series stored with the analysis and the points its failed or warned checks flag, both
// read from the page's JSON data blocks (nothing is fetched: an analysis never changes).
"use strict";
(function () {
  var C = window.teacherCurves;
  if (!C || !window.uPlot || !document.getElementById("analysis-series")) return;
  var series = C.dataBlock("analysis-series", []), flags = C.dataBlock("analysis-flags", []);
  var charts = C.build({}, flags);
  C.draw(charts, series);
  C.followWidth(charts);
  window.teacherAnalysis = { charts: charts, epochs: series.length };  // for the browser tests
})();
