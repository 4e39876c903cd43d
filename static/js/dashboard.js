/* Live dashboard: keeps the server-rendered page current over the ws/dashboard/ websocket.
   No framework, no build step. Messages: {type, payload} as produced by accessctl/realtime.py. */
(function () {
  "use strict";

  var config = JSON.parse(document.getElementById("dashboard-config").textContent);
  var labels = JSON.parse(document.getElementById("dashboard-labels").textContent);
  var csrf = document.querySelector('meta[name="csrf-token"]').getAttribute("content");
  var statusEl = document.getElementById("live-status");
  var feedBody = document.querySelector("#feed tbody");
  var alarmsEl = document.getElementById("alarms");
  var toastEl = document.getElementById("toast");

  var socket = null;
  var attempts = 0;
  var everConnected = false;
  var stopped = false;

  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (key) {
      if (key === "text") node.textContent = attrs[key];
      else if (key === "className") node.className = attrs[key];
      else node.setAttribute(key, attrs[key]);
    });
    (children || []).forEach(function (child) { if (child) node.appendChild(child); });
    return node;
  }

  function urlFor(name, id) { return config.urls[name].replace(/\/0\//, "/" + id + "/"); }

  function pad(n) { return (n < 10 ? "0" : "") + n; }
  var MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];

  function localiseTimes(root) {
    root.querySelectorAll("time[datetime]").forEach(function (node) {
      var d = new Date(node.getAttribute("datetime"));
      if (isNaN(d)) return;
      node.textContent = pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds());
      node.title = d.toLocaleString();
      var sub = node.nextElementSibling;
      if (sub && sub.classList.contains("sub")) sub.textContent = MONTHS[d.getMonth()] + " " + d.getDate();
    });
  }

  function setStatus(state, text) {
    statusEl.className = "live-status " + state;
    statusEl.textContent = text;
  }

  var toastTimer = null;
  function toast(message, ok) {
    toastEl.textContent = message;
    toastEl.className = "toast " + (ok ? "ok" : "error");
    toastEl.hidden = false;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(function () { toastEl.hidden = true; }, 4000);
  }

  /* --- access.event ---------------------------------------------------------------------- */
  function duration(s) {
    if (s < 90) return Math.round(s) + " s";
    if (s < 5400) return Math.round(s / 60) + " min";
    if (s < 172800) return Math.round(s / 3600) + " h";
    return Math.round(s / 86400) + " days";
  }

  /* A door's own decision: "offline, synced 3 min later · allow-list v7 · server would deny (suspended)"
     (the same words as accessctl/offline_marks.py writes on the server-rendered rows). */
  function offlineMark(o) {
    var parts = [o.synced_after_s === null || o.synced_after_s === undefined
      ? "offline" : "offline, synced " + duration(o.synced_after_s) + " later"];
    if (o.allowlist_version !== null && o.allowlist_version !== undefined) parts.push("allow-list v" + o.allowlist_version);
    else if (o.basis) parts.push(o.basis.replace(/_/g, "-"));
    if (o.agrees === true) parts.push("server agrees");
    else if (o.agrees === false) {
      var deny = o.server_decision !== "grant";
      parts.push("server would " + (deny ? "deny" : "grant") + (deny && o.server_reason ? " (" + o.server_reason.replace(/_/g, " ") + ")" : ""));
    }
    if (o.clock_ahead_s) parts.push("device clock " + duration(o.clock_ahead_s) + " ahead");
    return parts.join(" · ");
  }

  function eventRow(p) {
    var thumb = p.thumbnail_url
      ? el("img", { src: p.thumbnail_url, alt: "Face of " + (p.person || "unknown person"), width: "44", height: "44" })
      : el("span", { className: "noface", "aria-hidden": "true" });
    var person;
    if (p.person_id && config.canAudit) person = el("a", { href: urlFor("history", p.person_id), text: p.person });
    else if (p.person_id) person = document.createTextNode(p.person);
    else person = el("span", { className: "muted", text: p.reason === "remote_unlock" || p.reason === "lockdown" ? "operator" : "unknown" });
    var when = el("time", { datetime: p.occurred_at });
    var door = el("td", {}, [document.createTextNode(p.door || "—"), p.device_uid ? el("span", { className: "sub", text: p.device_uid }) : null]);
    var sim = p.similarity === null || p.similarity === undefined
      ? el("span", { className: "muted", text: "—" }) : document.createTextNode(Number(p.similarity).toFixed(3));
    var reason = el("td", { className: "reason", text: labels.reason[p.reason] || p.reason });
    var rowClass = "ev " + p.decision + " fresh";
    if (p.offline) {
      reason.appendChild(el("span", { className: "sub offline-mark", text: offlineMark(p.offline) }));
      rowClass += " offline" + (p.offline.agrees === false ? " disagrees" : "");
    }
    return el("tr", { className: rowClass, "data-event-id": String(p.id) }, [
      el("td", { className: "thumb" }, [thumb]),
      el("td", { className: "time" }, [when, el("span", { className: "sub" })]),
      door,
      el("td", {}, [person]),
      el("td", {}, [el("span", { className: "badge " + p.decision, text: p.decision })]),
      reason,
      el("td", { className: "num" }, [sim]),
    ]);
  }

  function onAccessEvent(p) {
    if (feedBody.querySelector('tr[data-event-id="' + p.id + '"]')) return;
    var row = eventRow(p);
    localiseTimes(row);
    feedBody.insertBefore(row, feedBody.firstChild);
    var rows = feedBody.querySelectorAll("tr.ev");
    for (var i = config.feedSize; i < rows.length; i++) rows[i].remove();
    feedBody.querySelector(".empty-row").hidden = true;
    setTimeout(function () { row.classList.remove("fresh"); }, 2500);
  }

  /* --- door.state / device.status ---------------------------------------------------------- */
  function onDoorState(p) {
    var tile = document.querySelector('.tile[data-door-id="' + p.id + '"]');
    if (!tile) { resync(); return; }
    tile.className = tile.className.replace(/\bmode-\S+/g, "").trim() + " mode-" + p.mode + " changed";
    tile.setAttribute("data-mode", p.mode);
    tile.querySelector(".mode-badge").textContent = labels.mode[p.mode] || p.mode;
    tile.querySelector(".door-name").textContent = p.name;
    setTimeout(function () { tile.classList.remove("changed"); }, 2000);
  }

  /* What a device does alone (devices.allowlist.offline_mode): its acknowledged offline mode,
     secure once an allow-list expired; "online" while it reaches the server. */
  function onDeviceStatus(p) {
    var chip = document.querySelector('.device[data-device-id="' + p.id + '"]');
    var tile = p.door_id ? document.querySelector('.tile[data-door-id="' + p.door_id + '"]') : null;
    if (!chip && !tile) return;
    if (!chip || (tile && !tile.contains(chip))) {
      if (chip) chip.remove();
      if (!tile || p.status === "disabled") return;
      chip = el("li", { className: "device", "data-device-id": String(p.id) }, [
        el("span", { className: "dot", "aria-hidden": "true" }),
        el("span", { className: "device-uid", text: p.uid }),
        el("span", { className: "device-status" }),
      ]);
      var list = tile.querySelector(".devices");
      var none = list.querySelector(".no-devices");
      if (none) none.remove();
      list.appendChild(chip);
    }
    /* Its link mode, as accessctl/offline_marks.py link_mode says: reachable, or deciding alone
       with what its last heartbeat declared (the fallback the page was rendered with). */
    var fallback = chip.getAttribute("data-fallback") || "secure";
    var reachable = ["online", "degraded", "provisioned", "disabled"].indexOf(p.status) >= 0;
    chip.className = "device status-" + p.status + " fallback-" + fallback;
    chip.querySelector(".device-status").textContent = reachable ? p.status : "offline-" + fallback;
    chip.title = p.last_seen ? "Last seen " + new Date(p.last_seen).toLocaleString() : "Never seen";
  }

  /* --- alarms ------------------------------------------------------------------------------ */
  function alarmPlace(p) {
    if (p.door_id) {
      var tile = document.querySelector('.tile[data-door-id="' + p.door_id + '"] .door-name');
      if (tile) return tile.textContent;
    }
    return p.device_uid || "";
  }

  function updateAlarmCount() {
    var n = alarmsEl.querySelectorAll(".alarm").length;
    document.getElementById("alarm-count").textContent = n;
    document.getElementById("alarms-empty").hidden = n > 0;
  }

  function onAlarmRaised(p) {
    if (p.acknowledged) { onAlarmAcknowledged(p); return; }
    var item = alarmsEl.querySelector('.alarm[data-alarm-id="' + p.id + '"]');
    if (!item) {
      var form = el("form", { method: "post", action: urlFor("acknowledge", p.id), className: "js-action" }, [
        el("input", { type: "hidden", name: "csrfmiddlewaretoken", value: csrf }),
        el("button", { type: "submit", className: "small", "data-action": "acknowledge", text: "Acknowledge" }),
      ]);
      item = el("li", { className: "alarm kind-" + p.kind, "data-alarm-id": String(p.id) }, [
        el("div", { className: "alarm-title" }, [
          document.createTextNode((labels.alarm[p.kind] || p.kind) + " "),
          el("span", { className: "alarm-count" }),
        ]),
        el("div", { className: "sub" }, [
          document.createTextNode(alarmPlace(p) + " · "), el("time", { datetime: p.raised_at }),
        ]),
        form,
      ]);
      localiseTimes(item);
      alarmsEl.insertBefore(item, alarmsEl.firstChild);
    }
    // Alarms that keep a face (presentation attacks) show the latest occurrence's crop.
    var face = item.querySelector(".alarm-face");
    if (p.thumbnail_url && !face) {
      face = el("img", { className: "alarm-face", alt: "Face presented", width: "44", height: "44" });
      item.insertBefore(face, item.querySelector("form"));
    }
    if (face && p.thumbnail_url && face.getAttribute("src") !== p.thumbnail_url) face.setAttribute("src", p.thumbnail_url);
    var count = item.querySelector(".alarm-count");
    count.textContent = "×" + p.count;
    count.hidden = p.count < 2;
    item.classList.toggle("cleared", !!p.cleared);  // a forced / held-open door closed again
    item.classList.add("fresh");
    setTimeout(function () { item.classList.remove("fresh"); }, 2500);
    updateAlarmCount();
  }

  function onAlarmAcknowledged(p) {
    var item = alarmsEl.querySelector('.alarm[data-alarm-id="' + p.id + '"]');
    if (item) item.remove();
    updateAlarmCount();
  }

  var handlers = {
    "access.event": onAccessEvent,
    "door.state": onDoorState,
    "device.status": onDeviceStatus,
    "alarm.raised": onAlarmRaised,
    "alarm.acknowledged": onAlarmAcknowledged,
    "alarm.cleared": onAlarmRaised,
  };

  /* --- resync after a reconnect: swap the panels for freshly rendered ones ------------------- */
  function resync() {
    fetch(window.location.href, { credentials: "same-origin", headers: { Accept: "text/html" } })
      .then(function (r) { if (!r.ok) throw new Error(r.status); return r.text(); })
      .then(function (html) {
        var doc = new DOMParser().parseFromString(html, "text/html");
        ["#doors", "#feed tbody", "#alarms"].forEach(function (sel) {
          var fresh = doc.querySelector(sel);
          var current = document.querySelector(sel);
          if (fresh && current) current.replaceWith(document.importNode(fresh, true));
        });
        feedBody = document.querySelector("#feed tbody");
        alarmsEl = document.getElementById("alarms");
        var siteActions = document.getElementById("site-actions");
        if (siteActions) siteActions.hidden = !document.querySelector("#doors .tile");
        localiseTimes(document);
        updateAlarmCount();
      })
      .catch(function () { /* the next reconnect tries again */ });
  }

  /* --- websocket with automatic reconnect -------------------------------------------------- */
  function connect() {
    var scheme = window.location.protocol === "https:" ? "wss://" : "ws://";
    socket = new WebSocket(scheme + window.location.host + config.ws);
    setStatus("connecting", everConnected ? "Reconnecting…" : "Connecting…");
    socket.onmessage = function (message) {
      var data;
      try { data = JSON.parse(message.data); } catch (e) { return; }
      if (data.type === "hello") {
        if (everConnected) resync();
        everConnected = true;
        attempts = 0;
        setStatus("live", "Live");
        return;
      }
      var handler = handlers[data.type];
      if (handler) handler(data.payload);
    };
    socket.onclose = function (event) {
      socket = null;
      if (event.code === 4403) {
        stopped = true;
        setStatus("offline", "Not allowed: sign in again");
        return;
      }
      if (stopped) return;
      attempts += 1;
      var delay = Math.min(15000, 500 * Math.pow(2, Math.min(attempts, 5))) + Math.random() * 500;
      setStatus("offline", "Offline, retrying in " + Math.round(delay / 1000) + " s");
      setTimeout(connect, delay);
    };
  }

  /* --- operator actions: POST with CSRF, result as a toast; state arrives over the socket ---- */
  document.addEventListener("submit", function (event) {
    var form = event.target;
    if (!form.classList.contains("js-action")) return;
    event.preventDefault();
    var question = form.getAttribute("data-confirm");
    if (question && !window.confirm(question)) return;
    var button = form.querySelector("button");
    button.disabled = true;
    fetch(form.action, {
      method: "POST",
      body: new FormData(form),
      credentials: "same-origin",
      headers: { Accept: "application/json", "X-CSRFToken": csrf },
    })
      .then(function (r) {
        return r.json().catch(function () { return { ok: false, message: "Request failed (" + r.status + ")." }; })
          .then(function (body) { toast(body.message || (r.ok ? "Done." : "Refused."), r.ok && body.ok !== false); });
      })
      .catch(function () { toast("Network error: the action was not sent.", false); })
      .then(function () { button.disabled = false; });
  });

  window.addEventListener("beforeunload", function () { stopped = true; if (socket) socket.close(); });
  localiseTimes(document);
  connect();
})();
