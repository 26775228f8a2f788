// The console's own script: charts from data-chart attributes, and htmx error handling.
// Hand-written (a few dozen lines) because the vendored htmx and uPlot do the heavy lifting.
(function () {
  "use strict";
  var palette = ["#2563eb", "#16a34a", "#dc2626", "#9333ea", "#ea580c", "#0891b2", "#ca8a04", "#db2777"];

  function drawChart(el) {
    if (el.dataset.drawn) return;
    el.dataset.drawn = "1";
    var spec = JSON.parse(el.dataset.chart);
    var series = [{}];
    var data = [spec.x];
    spec.series.forEach(function (s, i) {
      var color = palette[i % palette.length];
      series.push({ label: s.label, stroke: color, width: 2, spanGaps: true, fill: color + "14",
                    points: { show: spec.x.length < 60 } });
      data.push(s.values);
    });
    var opts = {
      width: Math.max(el.clientWidth, 300),
      height: 220,
      series: series,
      tzDate: function (ts) { return uPlot.tzDate(new Date(ts * 1e3), "Etc/UTC"); },
      axes: [{}, { label: spec.y_label, size: 60 }],
      legend: { live: true },
    };
    var chart = new uPlot(opts, data, el);
    el._chart = chart;
  }

  function drawCharts(root) {
    (root || document).querySelectorAll(".chart[data-chart]").forEach(drawChart);
  }

  function notice(text, kind) {
    var box = document.getElementById("notices");
    if (!box) return;
    var p = document.createElement("p");
    p.className = "notice " + (kind || "error");
    p.textContent = text;
    box.replaceChildren(p);
  }

  document.addEventListener("DOMContentLoaded", function () { drawCharts(document); });
  document.addEventListener("htmx:afterSettle", function (evt) { drawCharts(evt.target); });
  window.addEventListener("resize", function () {
    document.querySelectorAll(".chart[data-chart]").forEach(function (el) {
      if (el._chart) el._chart.setSize({ width: Math.max(el.clientWidth, 300), height: 220 });
    });
  });

  // 4xx answers carry a readable fragment: a refusal (403) goes to the notice area, a bad
  // form or a change that no longer applies (400, 404, 409, 422) replaces the target.
  document.addEventListener("htmx:beforeSwap", function (evt) {
    var status = evt.detail.xhr.status;
    if (status === 403) {
      evt.detail.shouldSwap = false;
      var tmp = document.createElement("div");
      tmp.innerHTML = evt.detail.xhr.responseText;
      notice(tmp.textContent.trim() || "not allowed");
    } else if (status === 400 || status === 404 || status === 409 || status === 422) {
      evt.detail.shouldSwap = true;
      evt.detail.isError = false;
    }
  });
  document.addEventListener("htmx:sendError", function () {
    notice("fieldbridge did not answer; is it running?");
  });
  document.addEventListener("htmx:responseError", function (evt) {
    if (evt.detail.xhr.status >= 500) notice("fieldbridge answered " + evt.detail.xhr.status);
  });
})();
