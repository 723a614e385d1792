// The live page: follows the admin API's event stream (Server-Sent Events,
// authorised by the session cookie) and lists each event as it comes.
(function () {
  "use strict";
  var list = document.getElementById("live");
  var state = document.getElementById("live-state");
  if (!list || !window.EventSource) { return; }
  var query = [];
  if (list.dataset.endpoint) { query.push("endpoint=" + encodeURIComponent(list.dataset.endpoint)); }
  if (list.dataset.type) { query.push("type=" + encodeURIComponent(list.dataset.type)); }
  var source = new EventSource("/api/v1/events" + (query.length ? "?" + query.join("&") : ""));
  function show(kind, event) {
    var item = document.createElement("li");
    item.className = "live-event";
    var title = document.createElement("strong");
    var body = event.data;
    var endpoint = "";
    try { var parsed = JSON.parse(body); endpoint = (parsed.data && parsed.data.endpoint) || ""; body = JSON.stringify(parsed, null, 2); } catch (e) { /* shown as it came */ }
    title.textContent = kind + (endpoint ? " · " + endpoint : "") + " · " + new Date().toLocaleTimeString();
    var pre = document.createElement("pre");
    pre.textContent = body;
    item.appendChild(title);
    item.appendChild(pre);
    list.insertBefore(item, list.firstChild);
    while (list.children.length > 200) { list.removeChild(list.lastChild); }
  }
  list.dataset.types.split(",").concat(["pollhook.test"]).forEach(function (kind) {
    source.addEventListener(kind, function (event) { show(kind, event); });
  });
  source.addEventListener("dropped", function (event) { state.textContent = "The stream was dropped: " + event.data + ". Reload to follow again."; source.close(); });
  source.onopen = function () { state.textContent = "Following events as they happen."; };
  source.onerror = function () { state.textContent = "Reconnecting to the event stream…"; };
}());
