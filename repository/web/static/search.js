// Cohort search: add per-muscle condition rows; drop empty inputs so URLs stay short.
(function () {
  "use strict";
  var add = document.getElementById("mc-add");
  var rows = document.getElementById("mc-rows");
  if (add && rows) {
    add.addEventListener("click", function () {
      var last = rows.querySelector(".mc-row:last-child");
      if (!last) { return; }
      var copy = last.cloneNode(true);
      copy.querySelectorAll("input").forEach(function (el) { el.value = ""; });
      copy.querySelectorAll("select.mc-muscle").forEach(function (el) { el.value = ""; });
      rows.appendChild(copy);
    });
  }
  var form = document.getElementById("search-form");
  if (form) {
    form.addEventListener("submit", function () {
      form.querySelectorAll(".mc-row").forEach(function (row) {
        var muscle = row.querySelector("select.mc-muscle");
        if (muscle && !muscle.value) {
          row.querySelectorAll("input, select").forEach(function (el) { el.disabled = true; });
        }
      });
      form.querySelectorAll("input[type=number], input[name=q]").forEach(function (el) {
        if (!el.value && !el.closest(".mc-row")) { el.disabled = true; }
      });
    });
  }
})();
