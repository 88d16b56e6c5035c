// The zoomable timeline of one environment: each pin drawn as the interval
// it was live, for the visible window only (pins are fetched a page at a
// time from /env/<E>/pins.json); a click, or Enter on the marker, asks the
// registry what was live at that instant (/env/<E>/at.json), the same
// answer `stackpin resolve` gives. Without this script the page still has
// the table of pins and the question form.
(function () {
  "use strict";
  var box = document.getElementById("timeline");
  var answer = document.getElementById("answer");
  if (!box || !window.fetch) return;
  var env = box.dataset.env;
  var first = Number(box.dataset.first);
  var MAX_PINS = 3000;
  var MIN_SPAN = 1e6; // one second, in microseconds
  var SVG = "http://www.w3.org/2000/svg";
  var nowMicros = function () { return Date.now() * 1000; };
  var view = whole();
  var cursor = null;
  var loaded = { pins: [], more: false, start: 0, end: 0 };
  var generation = 0;
  var drag = null;

  document.getElementById("timeline-controls").hidden = false;
  var range = document.createElement("p");
  range.className = "range";
  box.parentNode.insertBefore(range, box.nextSibling);

  function whole() {
    var now = nowMicros();
    var span = Math.max(now - first, MIN_SPAN * 60);
    return { start: first - span * 0.05, end: now + span * 0.05 };
  }

  function iso(micros) {
    return new Date(Math.floor(micros / 1000)).toISOString();
  }

  function hue(text) {
    // Spread by the golden angle, so releases with similar names differ.
    var h = 0;
    for (var i = 0; i < text.length; i++) h = (h * 31 + text.charCodeAt(i)) % 100003;
    return Math.round(h * 137.508) % 360;
  }

  function el(name, attrs, text) {
    var e = document.createElementNS(SVG, name);
    for (var k in attrs) e.setAttribute(k, attrs[k]);
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function load() {
    var mine = ++generation;
    var start = Math.floor(view.start), end = Math.ceil(view.end);
    var pins = [], liveAtStart = null;
    function page(fromSeq) {
      var url = "/env/" + encodeURIComponent(env) + "/pins.json?since=" + start + "&before=" + end +
        (fromSeq ? "&from_seq=" + fromSeq : "");
      return fetch(url, { credentials: "same-origin" }).then(function (r) { return r.json(); })
        .then(function (data) {
          if (mine !== generation) return;
          if (data.error) throw new Error(data.error);
          if (!fromSeq) liveAtStart = data.live_at_start;
          pins = pins.concat(data.pins);
          if (data.next_from_seq && pins.length < MAX_PINS) return page(data.next_from_seq);
          loaded = { pins: pins, liveAtStart: liveAtStart, more: !!data.next_from_seq, start: start, end: end };
          draw();
        });
    }
    page(null).catch(function (e) { range.textContent = "The timeline could not load: " + e.message; });
  }

  function draw() {
    var width = box.clientWidth || 800;
    var span = view.end - view.start;
    var x = function (t) { return (t - view.start) / span * width; };
    var svg = el("svg", { viewBox: "0 0 " + width + " 96", role: "img",
      "aria-label": "Pins of " + env + " from " + iso(view.start) + " to " + iso(view.end) });
    var defs = el("defs", {});
    var pat = el("pattern", { id: "hatch", width: 6, height: 6, patternUnits: "userSpaceOnUse", patternTransform: "rotate(45)" });
    pat.appendChild(el("rect", { width: 3, height: 6, fill: "#d0d7de" }));
    defs.appendChild(pat);
    svg.appendChild(defs);
    // Oldest first; the pin live at the window's start leads.
    var pins = loaded.pins.slice().sort(function (a, b) { return a.seq - b.seq; });
    if (loaded.liveAtStart && !loaded.more && (pins.length === 0 || pins[0].seq !== loaded.liveAtStart.seq)) {
      pins.unshift(loaded.liveAtStart);
    }
    var now = nowMicros();
    if (loaded.more && pins.length) {
      var stop = x(pins[0].from);
      svg.appendChild(el("rect", { class: "more", x: 0, y: 10, width: Math.max(stop, 0), height: 50 }));
      svg.appendChild(el("text", { x: 4, y: 74 }, "more pins here: zoom in"));
    }
    pins.forEach(function (p, i) {
      var until = i + 1 < pins.length ? pins[i + 1].from : now;
      var x0 = Math.max(x(p.from), 0), x1 = Math.min(x(until), width);
      if (x1 <= 0 || x0 >= width) return;
      var g = el("g", { class: "band" });
      var title = p.release_id + " (#" + p.seq + ") live from " + p.from_text +
        (i + 1 < pins.length ? " until " + pins[i + 1].from_text : ", still live");
      g.appendChild(el("title", {}, title));
      g.appendChild(el("rect", { x: x0, y: 10, width: Math.max(x1 - x0, 1), height: 50,
        fill: "hsl(" + hue(p.release_id) + ",55%,78%)", stroke: "#57606a", "stroke-width": 0.5,
        "data-release": p.release_id, "data-seq": p.seq }));
      if (x1 - x0 > 48) {
        g.appendChild(el("text", { x: x0 + 4, y: 39 }, p.release_id));
      }
      svg.appendChild(g);
    });
    var axis = el("g", { class: "axis" });
    for (var k = 0; k <= 4; k++) {
      var t = view.start + span * k / 4;
      var label = span > 5 * 86400e6 ? iso(t).slice(0, 10) : iso(t).slice(0, 19).replace("T", " ");
      axis.appendChild(el("line", { x1: x(t), x2: x(t), y1: 60, y2: 66, stroke: "#57606a" }));
      axis.appendChild(el("text", { x: Math.min(Math.max(x(t) - 40, 0), width - 120), y: 80 }, label));
    }
    svg.appendChild(axis);
    if (cursor !== null && cursor >= view.start && cursor <= view.end) {
      svg.appendChild(el("line", { x1: x(cursor), x2: x(cursor), y1: 4, y2: 66, stroke: "#a40e26", "stroke-width": 2 }));
    }
    box.replaceChildren(svg);
    box.dataset.start = String(Math.floor(view.start));
    box.dataset.end = String(Math.ceil(view.end));
    box.dataset.drawn = String(Number(box.dataset.drawn || 0) + 1);
    range.textContent = "Showing " + iso(view.start) + " to " + iso(view.end) + ": " +
      pins.length + " pin(s)" + (loaded.more ? " (more: zoom in)" : "") +
      (cursor !== null ? "; marker at " + iso(cursor) : "");
  }

  function set(start, end) {
    var all = whole();
    var span = Math.max(end - start, MIN_SPAN);
    span = Math.min(span, all.end - all.start);
    start = Math.min(Math.max(start, all.start), all.end - span);
    view = { start: start, end: start + span };
    load();
  }

  function zoom(factor, around) {
    var at = around === undefined ? (view.start + view.end) / 2 : around;
    set(at - (at - view.start) * factor, at + (view.end - at) * factor);
  }

  function pan(fraction) {
    var d = (view.end - view.start) * fraction;
    set(view.start + d, view.end + d);
  }

  function pick(t) {
    cursor = Math.round(t);
    draw();
    box.dataset.picked = String(cursor);
    fetch("/env/" + encodeURIComponent(env) + "/at.json?t=" + cursor, { credentials: "same-origin" })
      .then(function (r) { return r.json(); })
      .then(function (data) {
        answer.innerHTML = data.html || "";
        if (data.error) answer.textContent = data.error;
        answer.dataset.at = String(cursor);
      });
  }

  function instantAt(clientX) {
    var r = box.getBoundingClientRect();
    return view.start + (clientX - r.left) / r.width * (view.end - view.start);
  }

  box.addEventListener("mousedown", function (e) { drag = { x: e.clientX, start: view.start, end: view.end, moved: false }; });
  window.addEventListener("mousemove", function (e) {
    if (!drag) return;
    var dx = e.clientX - drag.x;
    if (Math.abs(dx) > 3) drag.moved = true;
    if (drag.moved) {
      var d = -dx / box.clientWidth * (drag.end - drag.start);
      view = { start: drag.start + d, end: drag.end + d };
      draw();
    }
  });
  window.addEventListener("mouseup", function (e) {
    if (!drag) return;
    var moved = drag.moved;
    drag = null;
    if (moved) set(view.start, view.end); else pick(instantAt(e.clientX));
  });
  box.addEventListener("wheel", function (e) {
    e.preventDefault();
    zoom(e.deltaY < 0 ? 0.8 : 1.25, instantAt(e.clientX));
  }, { passive: false });
  box.addEventListener("keydown", function (e) {
    var span = view.end - view.start;
    var c = cursor === null ? (view.start + view.end) / 2 : cursor;
    var step = e.shiftKey ? span / 10 : span / 100;
    switch (e.key) {
      case "ArrowLeft": cursor = Math.max(c - step, view.start); draw(); break;
      case "ArrowRight": cursor = Math.min(c + step, view.end); draw(); break;
      case "+": case "=": zoom(0.5, c); break;
      case "-": case "_": zoom(2, c); break;
      case "PageUp": pan(-0.5); break;
      case "PageDown": pan(0.5); break;
      case "Home": view = whole(); load(); break;
      case "Enter": case " ": pick(c); break;
      default: return;
    }
    e.preventDefault();
  });
  document.getElementById("timeline-controls").addEventListener("click", function (e) {
    var action = e.target && e.target.dataset ? e.target.dataset.action : null;
    if (action === "in") zoom(0.5);
    else if (action === "out") zoom(2);
    else if (action === "earlier") pan(-0.5);
    else if (action === "later") pan(0.5);
    else if (action === "all") { view = whole(); load(); }
  });
  window.addEventListener("resize", draw);
  load();
})();
