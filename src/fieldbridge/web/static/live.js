// The live view: the spy's Server-Sent Events as table rows, newest first.
(function () {
  "use strict";
  var KEEP = 200; // rows kept on the page
  var body = document.getElementById("live-events");
  var status = document.getElementById("live-status");
  var pause = document.getElementById("live-pause");
  var paused = false;

  function setStatus(text, state) {
    status.textContent = text;
    status.dataset.state = state;
  }

  function cell(row, text, cls) {
    var td = document.createElement("td");
    if (cls) td.className = cls;
    if (text instanceof Node) td.appendChild(text); else td.textContent = text == null ? "" : text;
    row.appendChild(td);
    return td;
  }

  function readings(message) {
    return message.readings.map(function (r) {
      return r.quantity + "=" + r.value + (r.unit ? " " + r.unit : "");
    }).join(", ") + (message.readings_omitted ? " … +" + message.readings_omitted : "");
  }

  function devices(event) {
    var span = document.createElement("span");
    (event.messages || []).forEach(function (m, i) {
      if (i) span.appendChild(document.createTextNode(", "));
      var a = document.createElement("a");
      a.href = "/devices/" + encodeURIComponent(m.device);
      a.textContent = m.device;
      span.appendChild(a);
    });
    return span;
  }

  function show(event) {
    var row = document.createElement("tr");
    row.className = "outcome-" + event.outcome;
    row.dataset.source = event.source;
    cell(row, event.time.replace("T", " ").replace(/\.\d+Z$/, "Z"));
    cell(row, event.source);
    cell(row, devices(event));
    cell(row, event.topic || "");
    var outcome = document.createElement("span");
    outcome.className = "state state-" + event.outcome;
    outcome.textContent = event.outcome;
    cell(row, outcome);
    if (event.outcome === "rejected") {
      cell(row, event.reason + " (quarantine #" + event.quarantine_id + ")", "error-text");
    } else {
      cell(row, (event.messages || []).map(readings).join(" | "));
    }
    body.prepend(row);
    while (body.rows.length > KEEP) body.deleteRow(body.rows.length - 1);
  }

  var source = new EventSource(body.dataset.stream);
  source.onopen = function () { setStatus("watching", "open"); };
  source.onerror = function () { setStatus("reconnecting…", "error"); };
  source.onmessage = function (msg) {
    var event = JSON.parse(msg.data);
    if (event.type === "hello") setStatus("watching", "open");
    else if (event.type === "dropped") setStatus(event.count + " messages skipped (too fast)", "open");
    else if (event.type === "message" && !paused) show(event);
  };
  pause.addEventListener("click", function () {
    paused = !paused;
    pause.textContent = paused ? "Resume" : "Pause";
    setStatus(paused ? "paused" : "watching", paused ? "paused" : "open");
  });
  window.addEventListener("beforeunload", function () { source.close(); });
})();
