// Tally's own few lines of JavaScript (everything else is htmx): show times in the reader's
// time zone, and fill the SQL editor from the examples, the history and the schema browser.
(function () {
  "use strict";
  var dateTime = new Intl.DateTimeFormat(undefined, {
    year: "numeric", month: "short", day: "numeric", hour: "2-digit", minute: "2-digit",
    timeZoneName: "short"
  });
  var axis = new Intl.DateTimeFormat(undefined, {
    month: "short", day: "numeric", hour: "2-digit", minute: "2-digit"
  });
  function localise(root) {
    root.querySelectorAll("time[datetime]").forEach(function (el) {
      var t = new Date(el.getAttribute("datetime"));
      if (!isNaN(t)) { el.textContent = dateTime.format(t); el.title = t.toISOString(); }
    });
    root.querySelectorAll("[data-ts]").forEach(function (el) {
      var t = new Date(Number(el.getAttribute("data-ts")));
      if (!isNaN(t)) { el.textContent = axis.format(t); }
    });
  }
  document.addEventListener("DOMContentLoaded", function () { localise(document); });
  document.addEventListener("htmx:afterSettle", function (e) { localise(e.target); });
  document.addEventListener("click", function (e) {
    var editor = document.getElementById("sql");
    if (!editor) { return; }
    var load = e.target.closest("[data-sql]");
    if (load) { editor.value = load.getAttribute("data-sql"); editor.focus(); return; }
    var insert = e.target.closest("[data-insert]");
    if (insert) {
      var at = editor.selectionStart || editor.value.length;
      var word = insert.getAttribute("data-insert");
      editor.value = editor.value.slice(0, at) + word + editor.value.slice(editor.selectionEnd || at);
      editor.focus();
      editor.selectionStart = editor.selectionEnd = at + word.length;
    }
  });
  document.addEventListener("submit", function (e) {
    if (e.target.id === "download-form") {
      document.getElementById("download-sql").value = document.getElementById("sql").value;
    }
  });
})();
