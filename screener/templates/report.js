(function () {
  "use strict";
  // Sorts each table of flagged users by moving the existing row nodes; it reads only data-v attributes and never
  // creates markup from text, so nothing in a cell can become code.
  function value(row, column, numeric) {
    var raw = row.cells[column].getAttribute("data-v");
    if (raw === null || raw === "") {
      return null;
    }
    return numeric ? Number(raw) : raw;
  }

  function sortBy(body, headers, header) {
    var button = header.querySelector("button");
    var column = header.cellIndex;
    var numeric = button.getAttribute("data-type") === "num";
    var current = header.getAttribute("aria-sort");
    var direction = current === "none" ? button.getAttribute("data-first") :
      (current === "ascending" ? "descending" : "ascending");
    var sign = direction === "ascending" ? 1 : -1;
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = value(a, column, numeric);
      var y = value(b, column, numeric);
      if (x === null || y === null) {
        // Missing values stay at the bottom whichever way the column is sorted.
        return (x === null) - (y === null);
      }
      if (numeric) {
        return sign * (x - y);
      }
      return sign * x.localeCompare(y);
    });
    for (var i = 0; i < rows.length; i++) {
      body.appendChild(rows[i]);
    }
    for (var j = 0; j < headers.length; j++) {
      if (headers[j].hasAttribute("aria-sort")) {
        headers[j].setAttribute("aria-sort", headers[j] === header ? direction : "none");
      }
    }
  }

  function sortable(table) {
    var body = table.tBodies[0];
    var headers = table.tHead.rows[0].cells;
    for (var k = 0; k < headers.length; k++) {
      (function (header) {
        var button = header.querySelector("button");
        if (button) {
          button.addEventListener("click", function () {
            sortBy(body, headers, header);
          });
        }
      })(headers[k]);
    }
  }

  var tables = document.querySelectorAll("table.flagged-table");
  for (var t = 0; t < tables.length; t++) {
    sortable(tables[t]);
  }
})();
