/* linetap head office: the sensitive-span form of a recording page (templates/_notes.html).
 * "Current time" fills the span's start or end with the player's position, which
 * player.js keeps in the note form's [data-role="note-at-ms"] field. The panel is swapped
 * by htmx, hence one delegated listener. No inline script: the CSP allows 'self' only. */
(function () {
  "use strict";
  function fmt(ms) {
    var tenths = Math.floor(ms / 100);
    var s = Math.floor(tenths / 10);
    return String(Math.floor(s / 60)).padStart(2, "0") + ":" + String(s % 60).padStart(2, "0") + "." + String(tenths % 10);
  }
  document.addEventListener("click", function (ev) {
    var btn = ev.target && ev.target.closest ? ev.target.closest("[data-sensitive-fill]") : null;
    if (!btn) return;
    ev.preventDefault();
    var at = document.querySelector('[data-role="note-at-ms"]');
    var field = document.getElementById(btn.getAttribute("data-sensitive-fill"));
    var ms = at ? parseInt(at.value, 10) : NaN;
    if (!field || !isFinite(ms)) return;
    field.value = fmt(ms);
    field.focus();
  });
})();
