// berth dashboard: live sections and logs over server-sent events. The
// pages work without it; it only keeps them current.
(function () {
  "use strict";
  var status = document.getElementById("live-status");
  function say(text) { if (status) { status.textContent = text; } }

  var live = document.getElementById("live");
  if (live && window.EventSource) {
    // A form being filled in is left alone until it is sent.
    var dirty = false;
    live.addEventListener("input", function () {
      if (!dirty) { say("Live updates held while you fill in the form."); }
      dirty = true;
    });
    var es = new EventSource(location.pathname + location.search);
    var first = true;
    // The control that has the focus, as a selector and its place among
    // the section's matches, to give the focus back to its new copy: a
    // keyboard user keeps their place however often the section is redrawn.
    var focusKey = function () {
      var a = document.activeElement;
      if (!a || a === live || !live.contains(a)) { return null; }
      var sel = a.tagName.toLowerCase();
      if (a.id) {
        sel = "#" + CSS.escape(a.id);
      } else if (a.getAttribute("href")) {
        sel += '[href="' + CSS.escape(a.getAttribute("href")) + '"]';
      } else if (a.getAttribute("name")) {
        sel += '[name="' + CSS.escape(a.getAttribute("name")) + '"]';
      }
      return { sel: sel, i: Array.prototype.indexOf.call(live.querySelectorAll(sel), a) };
    };
    es.addEventListener("live", function (e) {
      if (first) { first = false; live.setAttribute("data-connected", ""); }
      if (dirty) { return; }
      var key = focusKey();
      live.innerHTML = e.data;
      if (key) {
        var all = live.querySelectorAll(key.sel), el = all[key.i] || all[0];
        if (el) { el.focus({ preventScroll: true }); }
      }
      live.setAttribute("data-updated", new Date().toISOString());
      say("");
    });
    es.onerror = function () { say("Live updates interrupted; retrying…"); };
  }

  var logs = document.getElementById("logs");
  if (logs && window.EventSource) {
    var src = logs.getAttribute("data-stream") + "?after=" + encodeURIComponent(logs.getAttribute("data-after") || "0");
    var ls = new EventSource(src);
    ls.addEventListener("log", function (e) {
      var l;
      try { l = JSON.parse(e.data); } catch (err) { return; }
      var empty = logs.querySelector(".empty");
      if (empty) { empty.remove(); }
      var atEnd = logs.scrollTop + logs.clientHeight >= logs.scrollHeight - 8;
      var li = document.createElement("li");
      li.className = l.stream;
      var t = document.createElement("time");
      t.dateTime = l.time;
      t.textContent = l.time.replace("T", " ").replace(/\.\d+/, "");
      var src = document.createElement("span");
      src.className = "src";
      src.textContent = l.app + (l.service ? "/" + l.service : "");
      var text = document.createElement("span");
      text.className = "text";
      text.textContent = l.text;
      li.append(t, " ", src, " ", text);
      logs.append(li);
      while (logs.children.length > 1000) { logs.firstElementChild.remove(); }
      if (atEnd) { logs.scrollTop = logs.scrollHeight; }
    });
  }
})();
