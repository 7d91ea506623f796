// Submit page: choosing a config loads it into the editor; an error's line is selected on click.
"use strict";
(function () {
  var pick = document.getElementById("config");
  if (pick) pick.addEventListener("change", function () { pick.form.submit(); });
  var area = document.getElementById("yaml");
  document.querySelectorAll("#field-errors li[data-line]").forEach(function (li) {
    li.tabIndex = 0;
    function go() {
      var line = parseInt(li.getAttribute("data-line"), 10), lines = area.value.split("\n"), start = 0;
      for (var i = 0; i < line - 1 && i < lines.length; i++) start += lines[i].length + 1;
      area.focus();
      area.setSelectionRange(start, start + (lines[line - 1] || "").length);
    }
    li.addEventListener("click", go);
    li.addEventListener("keydown", function (e) { if (e.key === "Enter") go(); });
  });
  var first = document.querySelector("#field-errors li[data-line]");
  if (first) first.click();
})();
