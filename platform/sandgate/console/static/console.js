// sandgate console: live updates over the event feed (GET /console/events, server-sent events).
// No framework, no inline script (the pages' CSP forbids it). Text from events is set with
// textContent only, never parsed as HTML; page regions are refreshed from the server's own
// (escaped) rendering of the same URL.
(function () {
  "use strict";
  var body = document.body;
  if (!body || !body.dataset.live || typeof EventSource === "undefined") { return; }
  var actions = (body.dataset.actions || "").split(",").filter(Boolean);
  var status = document.getElementById("live-status");
  var feed = document.getElementById("feed");
  var url = "/console/events";
  var pending = null;
  var refreshing = false;

  function setStatus(text) { if (status) { status.textContent = text; } }

  function describe(ev) {
    var text = "#" + ev.id + " " + ev.action + " " + ev.skill;
    if (ev.version !== null && ev.version !== undefined) { text += " v" + ev.version; }
    text += " by " + ev.actor;
    if (ev.reason) { text += ": " + ev.reason; }
    return text;
  }

  function addToFeed(ev) {
    if (!feed) { return; }
    var empty = document.getElementById("feed-empty");
    if (empty) { empty.remove(); }
    var li = document.createElement("li");
    li.className = "event " + ev.action;
    li.setAttribute("data-event-id", String(ev.id));
    var link = document.createElement("a");
    link.href = "/console/skills/" + encodeURIComponent(ev.skill);
    link.textContent = describe(ev);
    li.appendChild(link);
    feed.insertBefore(li, feed.firstChild);
    while (feed.children.length > 50) { feed.removeChild(feed.lastChild); }
  }

  function refresh() {
    if (refreshing) { pending = pending || setTimeout(function () { pending = null; refresh(); }, 300); return; }
    refreshing = true;
    fetch(window.location.href, { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (html) {
        if (html === null) { return; }
        var doc = new DOMParser().parseFromString(html, "text/html");
        var regions = document.querySelectorAll("[data-live-region]");
        for (var i = 0; i < regions.length; i++) {
          var old = regions[i];
          if (!old.id || old.contains(document.activeElement)) { continue; }
          var fresh = doc.getElementById(old.id);
          if (fresh) { old.replaceWith(document.importNode(fresh, true)); }
        }
        body.setAttribute("data-refreshed", String(Date.now()));
      })
      .catch(function () { /* the next event tries again */ })
      .then(function () { refreshing = false; });
  }

  function onEvent(message) {
    var ev;
    try { ev = JSON.parse(message.data); } catch (e) { return; }
    addToFeed(ev);
    var skill = body.dataset.skill;
    if (!skill || ev.skill === skill) {
      if (pending) { clearTimeout(pending); }
      pending = setTimeout(function () { pending = null; refresh(); }, 150);
    }
  }

  var source = new EventSource(url);
  source.addEventListener("ready", function () { setStatus("live"); body.setAttribute("data-live-ready", "1"); });
  source.onerror = function () { setStatus("live: reconnecting"); };
  for (var i = 0; i < actions.length; i++) { source.addEventListener(actions[i], onEvent); }
}());
