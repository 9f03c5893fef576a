/* linetap head office: QA scorecards (routes_scorecards.py). No inline script: the CSP
 * allows 'self' only.
 *
 * 1. The evaluation page (templates/evaluate.html): previews the total in
 *    <output id="qa-total"> (and each section's) while answering, with the server's rule
 *    (headoffice/web/qa_forms.py: score): yes 4, no 0, scale N: N - 1 quarters; n.a. and
 *    unanswered questions left out; total = Σ weight·quarters / (4·Σ weight) in basis
 *    points, rounded half up in integer arithmetic; a critical "no" (or 1) makes it 0.
 *    Only a preview: the server scores again on save, and its total is the one stored.
 * 2. The recording page: a "#t=SECONDS" address (an evaluation's comment times link so)
 *    moves the player there, through player.js's own [data-seek-ms] click handling.
 */
(function () {
  "use strict";

  function quarters(kind, value) {
    if (value === "na" || value === null) return null;
    if (kind === "yes_no") return value === "yes" ? 4 : 0;
    return parseInt(value, 10) - 1;
  }

  function criticalFail(kind, value) {
    return value === (kind === "yes_no" ? "no" : "1");
  }

  /* floor((2N + D) / 2D) with N = 10000·Σ w·q, D = 4·Σ w, in exact integer steps. */
  function basisPoints(pairs) {
    var n = 0;
    var w = 0;
    pairs.forEach(function (p) { n += p[0] * p[1]; w += p[0]; });
    if (!w) return null;
    var num = 2 * 10000 * n + 4 * w;
    var den = 2 * 4 * w;
    return (num - (num % den)) / den;
  }

  function percent(bp) {
    if (bp === null) return "—";
    var rest = bp % 100;
    return Math.floor(bp / 100) + "." + (rest < 10 ? "0" : "") + rest + " %";
  }

  function rate(questions) {
    var pairs = [];
    var failed = [];
    var open = 0;
    questions.forEach(function (q) {
      var picked = q.el.querySelector('input[type="radio"]:checked');
      var value = picked ? picked.value : null;
      if (value === null) open += 1;
      var qs = quarters(q.kind, value);
      if (qs !== null) pairs.push([q.weight, qs]);
      if (q.critical && value !== null && criticalFail(q.kind, value)) failed.push(q.id);
    });
    var raw = basisPoints(pairs);
    return { raw: raw, score: raw === null ? null : (failed.length ? 0 : raw), failed: failed, open: open };
  }

  function startScorecard(form) {
    var total = document.getElementById("qa-total");
    var status = form.querySelector('[data-role="qa-status"]');
    var questions = Array.prototype.map.call(form.querySelectorAll("[data-question]"), function (el) {
      return {
        el: el,
        id: el.getAttribute("data-question"),
        kind: el.getAttribute("data-kind"),
        weight: parseInt(el.getAttribute("data-weight"), 10),
        critical: el.getAttribute("data-critical") === "true",
        section: el.closest("[data-section]").getAttribute("data-section"),
      };
    });

    function update() {
      var all = rate(questions);
      total.textContent = percent(all.score);
      total.setAttribute("data-bp", all.score === null ? "" : String(all.score));
      total.classList.toggle("qa-failed-score", all.failed.length > 0);
      form.querySelectorAll("[data-section-total]").forEach(function (out) {
        var name = out.getAttribute("data-section-total");
        var part = rate(questions.filter(function (q) { return q.section === name; }));
        out.textContent = part.score === null ? "—" : percent(part.score);
      });
      if (!status) return;
      var parts = [];
      if (all.failed.length) parts.push("Failed: a critical question is not met, so the total is 0 % (" + percent(all.raw) + " without it).");
      if (all.open) parts.push(all.open + " question" + (all.open === 1 ? "" : "s") + " still to answer.");
      if (!parts.length) parts.push("All answered. The server computes the total again when you save.");
      status.textContent = parts.join(" ");
    }

    form.addEventListener("change", update);
    update();
  }

  /* #t=7.250 -> a click on a [data-seek-ms] element, once player.js has its player. */
  function seekFromHash() {
    var match = /^#t=(\d+(?:\.\d+)?)$/.exec(window.location.hash);
    var player = document.getElementById("player");
    if (!match || !player || player.getAttribute("data-may-listen") !== "true") return;
    var ms = Math.round(parseFloat(match[1]) * 1000);
    var tries = 0;
    var timer = window.setInterval(function () {
      tries += 1;
      if (player.wavesurfer) {
        window.clearInterval(timer);
        var seek = document.createElement("button");
        seek.type = "button";
        seek.hidden = true;
        seek.setAttribute("data-seek-ms", String(ms));
        player.appendChild(seek);
        seek.click();
        player.removeChild(seek);
        player.scrollIntoView({ block: "start" });
      } else if (tries > 100) {
        window.clearInterval(timer); // no player after 10 s: the page says why
      }
    }, 100);
  }

  function init() {
    var form = document.querySelector('form[data-role="scorecard"]');
    if (form && document.getElementById("qa-total")) startScorecard(form);
    seekFromHash();
  }
  window.addEventListener("hashchange", seekFromHash);
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
