/* linetap head office: the notes panel of a recording page (templates/_notes.html).
 * htmx leaves 4xx answers unswapped; a refused note (400) carries its message in the
 * panel fragment, so that one is shown. The player's parts (seek on a note's time, the
 * form's position) are in player.js. No inline script: the CSP allows 'self' only. */
(function () {
  "use strict";
  document.addEventListener("htmx:beforeSwap", function (ev) {
    var d = ev.detail;
    if (d && d.xhr && d.xhr.status === 400 && d.target && d.target.id === "notes-panel") {
      d.shouldSwap = true;
      d.isError = false;
    }
  });
})();
