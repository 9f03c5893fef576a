/* linetap head office: the in-page player of a recording page.
 *
 * Fills <div id="player"> (templates/recording.html) from its data attributes:
 * wavesurfer.js 8 (vendored, the global WaveSurfer) draws the server's peaks (GET
 * data-peaks-url) so the browser never downloads the audio just to draw it; the audio
 * itself (data-audio-url) is fetched by the media element with HTTP Range requests
 * only when played (preload="none"). Masked DTMF spans are Regions, not draggable.
 * No inline script or style: the page's CSP allows 'self' only.
 */
(function () {
  "use strict";

  var SKIP_S = 10;
  var SPEEDS = [0.5, 0.75, 1, 1.25, 1.5, 2];

  function fmt(seconds) {
    var s = Math.max(0, seconds || 0);
    var h = Math.floor(s / 3600);
    var m = Math.floor((s % 3600) / 60);
    var rest = (s % 60).toFixed(1);
    if (rest.length < 4) rest = "0" + rest;
    return (h ? h + ":" + String(m).padStart(2, "0") : String(m)) + ":" + rest;
  }

  /* wavesurfer puts its layout CSS in a <style> inside its shadow root, which the CSP
   * (style-src 'self', no 'unsafe-inline') does not apply. The same text adopted as a
   * constructed stylesheet is CSSOM, which the CSP allows. */
  function adoptShadowStyles(ws) {
    var root = ws.getWrapper().getRootNode();
    if (!root || !("adoptedStyleSheets" in root) || typeof CSSStyleSheet !== "function") return;
    var sheets = [];
    root.querySelectorAll("style").forEach(function (el) {
      try {
        var sheet = new CSSStyleSheet();
        sheet.replaceSync(el.textContent || "");
        sheets.push(sheet);
      } catch (e) {
        /* an old browser: the waveform still draws, only less neatly */
      }
    });
    root.adoptedStyleSheets = sheets;
  }

  function start(player) {
    var status = player.querySelector('[data-role="status"]');
    var current = player.querySelector('[data-role="current"]');
    var total = player.querySelector('[data-role="total"]');
    var playBtn = player.querySelector('[data-action="play"]');
    var speed = player.querySelector('[data-action="speed"]');
    var controls = player.querySelectorAll("button[data-action], select[data-action]");
    var say = function (text) { if (status) status.textContent = text; };

    if (typeof WaveSurfer === "undefined" || !WaveSurfer.Regions) {
      say("The player could not load its scripts.");
      return;
    }

    var media = document.createElement("audio");
    media.preload = "none"; // no audio byte leaves the office until someone presses play
    media.setAttribute("data-role", "media");
    player.appendChild(media);

    fetch(player.dataset.peaksUrl, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (r) {
        if (!r.ok) throw new Error(r.status === 403 || r.status === 404 ? "not allowed" : "HTTP " + r.status);
        return r.json();
      })
      .then(function (data) { build(data); })
      .catch(function (err) { say("The waveform could not be loaded (" + err.message + ")."); });

    function build(data) {
      var regions = WaveSurfer.Regions.create();
      var ws = WaveSurfer.create({
        container: player.querySelector("#waveform"),
        media: media,
        url: player.dataset.audioUrl,
        peaks: data.peaks,
        duration: data.duration,
        height: 96,
        normalize: true,
        waveColor: "#4f5b67",
        progressColor: "#0b5cad",
        cursorColor: "#8a1c13",
        cursorWidth: 2,
        dragToSeek: true,
        plugins: [regions],
      });
      adoptShadowStyles(ws);
      player.wavesurfer = ws; // for tests and the console

      var drawn = false;
      function addRegions() {
        if (drawn) return;
        drawn = true;
        var lastEnd = -Infinity;
        (data.regions || []).forEach(function (span, i) {
          // Key presses come in runs (a card number): one label per run stays legible.
          var first = span.start - lastEnd > 1.0;
          lastEnd = span.end;
          var region = regions.addRegion({
            id: "masked-" + i,
            start: span.start,
            end: span.end,
            content: first ? "masked" : undefined,
            color: "rgba(138, 28, 19, 0.22)",
            drag: false,
            resize: false,
          });
          if (region.element) {
            region.element.setAttribute("data-masked", "true");
            region.element.setAttribute("role", "note");
            region.element.setAttribute(
              "aria-label",
              "Masked key presses from " + fmt(span.start) + " to " + fmt(span.end)
            );
          }
        });
        player.dataset.maskedRegions = String((data.regions || []).length);
        say(
          (data.regions || []).length
            ? (data.regions.length + " masked key-press span(s) are shaded on the waveform.")
            : "Ready."
        );
      }
      ws.on("ready", addRegions);
      ws.on("decode", addRegions);

      controls.forEach(function (el) { el.disabled = false; });
      if (total) total.textContent = fmt(data.duration);

      function show() { if (current) current.textContent = fmt(ws.getCurrentTime()); }
      ws.on("timeupdate", show);
      ws.on("seeking", show);
      ws.on("play", function () {
        playBtn.textContent = "Pause";
        playBtn.setAttribute("aria-label", "Pause");
      });
      ws.on("pause", function () {
        playBtn.textContent = "Play";
        playBtn.setAttribute("aria-label", "Play");
      });
      ws.on("finish", function () {
        playBtn.textContent = "Play";
        playBtn.setAttribute("aria-label", "Play");
      });
      ws.on("error", function (err) { say("Playback failed: " + (err && err.message ? err.message : err)); });

      function skip(seconds) {
        var t = Math.min(Math.max(0, ws.getCurrentTime() + seconds), ws.getDuration() || data.duration);
        ws.setTime(t);
        show();
      }
      function setSpeed(rate) {
        ws.setPlaybackRate(rate, true);
        speed.value = String(rate);
        say("Speed " + rate + "×");
      }
      function stepSpeed(dir) {
        var now = parseFloat(speed.value);
        var i = SPEEDS.indexOf(now);
        if (i < 0) i = SPEEDS.indexOf(1);
        var next = SPEEDS[Math.min(SPEEDS.length - 1, Math.max(0, i + dir))];
        setSpeed(next);
      }
      function toggle() {
        ws.playPause().catch(function (err) { say("Playback failed: " + err.message); });
      }

      /* Notes (templates/_notes.html, swapped by htmx, hence delegated listeners): a
       * note's time seeks the player; the note form takes the player's position. */
      function fillNoteTime() {
        var ms = Math.round(ws.getCurrentTime() * 1000);
        document.querySelectorAll('[data-role="note-at-ms"]').forEach(function (el) { el.value = String(ms); });
        document.querySelectorAll('[data-role="note-at"]').forEach(function (el) {
          var s = Math.floor(ms / 1000);
          el.textContent = String(Math.floor(s / 60)).padStart(2, "0") + ":" + String(s % 60).padStart(2, "0");
        });
      }
      ws.on("timeupdate", fillNoteTime);
      ws.on("seeking", fillNoteTime);
      document.addEventListener("htmx:afterSwap", fillNoteTime);
      document.addEventListener("submit", fillNoteTime, true); // before htmx reads the form
      document.addEventListener("click", function (ev) {
        var el = ev.target && ev.target.closest ? ev.target.closest("[data-seek-ms]") : null;
        if (!el) return;
        ev.preventDefault();
        var t = parseInt(el.getAttribute("data-seek-ms"), 10) / 1000;
        if (!isFinite(t)) return;
        t = Math.min(Math.max(0, t), ws.getDuration() || data.duration);
        function go() { ws.setTime(t); show(); fillNoteTime(); }
        if (media.readyState >= 1) {
          go();
        } else {
          // Not loaded yet (preload="none"): a position only sticks once the media
          // knows its metadata, so load it (as play would) and seek then.
          media.addEventListener("loadedmetadata", go, { once: true });
          media.preload = "metadata";
          media.load();
          if (current) current.textContent = fmt(t);
        }
        say("Moved to " + fmt(t) + ".");
      });

      player.querySelector('[data-action="back"]').addEventListener("click", function () { skip(-SKIP_S); });
      player.querySelector('[data-action="forward"]').addEventListener("click", function () { skip(SKIP_S); });
      playBtn.addEventListener("click", toggle);
      speed.addEventListener("change", function () { setSpeed(parseFloat(speed.value)); });

      document.addEventListener("keydown", function (ev) {
        if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
        var tag = ev.target && ev.target.tagName;
        if (tag === "INPUT" || tag === "TEXTAREA" || tag === "SELECT" || (ev.target && ev.target.isContentEditable)) return;
        if (ev.key === " " || ev.key === "Spacebar") {
          if (tag === "BUTTON" || tag === "A") return; // its own activation
          ev.preventDefault();
          toggle();
        } else if (ev.key === "ArrowLeft") {
          ev.preventDefault();
          skip(-SKIP_S);
        } else if (ev.key === "ArrowRight") {
          ev.preventDefault();
          skip(SKIP_S);
        } else if (ev.key === "[") {
          stepSpeed(-1);
        } else if (ev.key === "]") {
          stepSpeed(1);
        }
      });
    }
  }

  function init() {
    var player = document.getElementById("player");
    if (player && player.dataset.mayListen === "true") start(player);
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
