/* Bulk import: upload a folder (in batches) or a zip with an upload progress bar, start the Celery
   task, then poll its progress until it finishes and list every photo's verdict. Errors say which
   step failed and what the server answered. Verdicts are shown by the status string the server
   sends, so a status this page does not know yet still displays. */
(function () {
  "use strict";
  var form = document.getElementById("import-form");
  if (!form) return;
  var csrf = document.querySelector('meta[name="csrf-token"]').getAttribute("content");
  var uploadUrl = form.getAttribute("data-upload-url");
  var batchSize = parseInt(form.getAttribute("data-batch"), 10) || 50;
  var panel = document.getElementById("import-progress");
  var bar = document.getElementById("import-bar");
  var phase = document.getElementById("import-phase");
  var text = document.getElementById("import-text");
  var stats = document.getElementById("import-stats");
  var recent = document.getElementById("import-recent");
  var results = document.getElementById("import-results");
  var discarded = document.getElementById("import-discarded");
  var IMAGE = /\.(jpe?g|png|webp)$/i;
  var LABELS = { accepted: "Accepted", pending: "To review", held: "Held for review", rejected: "Rejected", error: "Errors" };
  var STATUS_TEXT = {
    400: "the request was refused as malformed",
    401: "you are signed out; sign in again",
    403: "not allowed: sign in again, or ask for the enrolment permission",
    404: "the import was not found",
    413: "too large",
    429: "too many requests; wait a moment",
    500: "server error; see the web log",
    502: "the server is unreachable",
    503: "the server is unavailable"
  };

  function size(bytes) {
    var units = ["bytes", "KiB", "MiB", "GiB"];
    var i = 0;
    while (bytes >= 1024 && i < units.length - 1) { bytes /= 1024; i += 1; }
    return (i ? bytes.toFixed(1) : bytes) + " " + units[i];
  }

  function label(status) {
    return LABELS[status] || (status.charAt(0).toUpperCase() + status.slice(1).replace(/_/g, " "));
  }

  function answerText(status, body) {
    var detail = body && body.error;
    if (detail && typeof detail === "object") detail = detail.message || detail.code;
    var known = STATUS_TEXT[status] || (status >= 500 ? "server error" : "refused");
    return (detail ? detail : known) + " (HTTP " + status + ")";
  }

  /* POST ``data`` (a FormData, or nothing: no body at all) and resolve with the JSON answer; reject
     with "<what> failed: <why>". */
  function post(url, data, what, onProgress) {
    return new Promise(function (resolve, reject) {
      var xhr = new XMLHttpRequest();
      xhr.open("POST", url);
      xhr.setRequestHeader("X-CSRFToken", csrf);
      xhr.setRequestHeader("Accept", "application/json");
      if (onProgress) xhr.upload.onprogress = function (e) { if (e.lengthComputable) onProgress(e.loaded); };
      xhr.onload = function () {
        var body = null;
        try { body = JSON.parse(xhr.responseText); } catch (e) { /* not JSON */ }
        if (xhr.status >= 200 && xhr.status < 300 && body) resolve(body);
        else if (xhr.status >= 200 && xhr.status < 300) reject(new Error(what + " failed: the server's answer was not JSON"));
        else reject(new Error(what + " failed: " + answerText(xhr.status, body)));
      };
      xhr.onerror = function () { reject(new Error(what + " failed: no answer from the server (network error)")); };
      xhr.send(data || null);
    });
  }

  function show(p, message) {
    bar.value = Math.max(0, Math.min(100, p));
    text.textContent = message;
  }

  function uploadFolder(files) {
    var total = files.reduce(function (s, f) { return s + f.size; }, 0) || 1;
    var sent = 0;
    var job = "";
    var batches = [];
    for (var i = 0; i < files.length; i += batchSize) batches.push(files.slice(i, i + batchSize));
    return batches.reduce(function (chain, batch, index) {
      return chain.then(function () {
        var data = new FormData();
        if (job) data.append("job", job);
        batch.forEach(function (f) {
          data.append("files", f);
          data.append("paths", f.webkitRelativePath || f.name);
        });
        var batchBytes = batch.reduce(function (s, f) { return s + f.size; }, 0);
        var what = "Uploading photos (batch " + (index + 1) + " of " + batches.length + ")";
        return post(uploadUrl, data, what, function (loaded) {
          show(100 * (sent + loaded) / total, "Uploaded " + Math.round((sent + loaded) / 1024) + " of " + Math.round(total / 1024) + " KiB");
        }).then(function (body) { job = body.job; sent += batchBytes; });
      });
    }, Promise.resolve()).then(function () { return job; });
  }

  function uploadZip(file) {
    var data = new FormData();
    data.append("archive", file);
    return post(uploadUrl, data, "Uploading " + file.name, function (loaded) {
      show(100 * loaded / (file.size || 1), "Uploaded " + Math.round(loaded / 1024) + " of " + Math.round(file.size / 1024) + " KiB");
    }).then(function (body) { return body.job; });
  }

  function verdictItem(item, tag) {
    var row = document.createElement(tag);
    row.className = "verdict status-" + String(item.status).replace(/[^a-z0-9_-]/gi, "");
    row.setAttribute("data-status", item.status);
    var name = document.createElement(item.person_id ? "a" : "span");
    name.className = "verdict-file";
    if (item.person_id) name.href = "/enrol/people/" + encodeURIComponent(item.person_id) + "/";
    name.textContent = item.person + "/" + item.file;
    var badge = document.createElement("span");
    badge.className = "badge verdict-" + String(item.status).replace(/[^a-z0-9_-]/gi, "");
    badge.textContent = label(String(item.status));
    row.appendChild(name);
    row.appendChild(document.createTextNode(" "));
    row.appendChild(badge);
    if (item.reason) {
      var reason = document.createElement("span");
      reason.className = "reason-code";
      reason.textContent = item.reason;
      row.appendChild(document.createTextNode(" "));
      row.appendChild(reason);
    }
    return row;
  }

  function renderStats(state) {
    var verdicts = state.verdicts || {};
    stats.textContent = "";
    Object.keys(verdicts).sort().forEach(function (status) {
      var div = document.createElement("div");
      div.setAttribute("data-status", status);
      var dt = document.createElement("dt");
      dt.textContent = label(status);
      var dd = document.createElement("dd");
      dd.textContent = verdicts[status];
      div.appendChild(dt);
      div.appendChild(dd);
      stats.appendChild(div);
    });
  }

  function render(state) {
    renderStats(state);
    recent.textContent = "";
    (state.recent || []).slice().reverse().forEach(function (item) { recent.appendChild(verdictItem(item, "li")); });
  }

  function renderFinished(state) {
    recent.textContent = "";
    recent.hidden = true;
    results.textContent = "";
    (state.items || []).forEach(function (item) { results.appendChild(verdictItem(item, "li")); });
    if (state.items_omitted) {
      var more = document.createElement("li");
      more.className = "muted";
      more.textContent = "… and " + state.items_omitted + " more (see each person's page)";
      results.appendChild(more);
    }
    results.hidden = !results.childNodes.length;
    var names = state.people_discarded || [];
    discarded.textContent = names.length ? "No person created for " + names.join(", ") + ": none of their photos was accepted or held for review." : "";
    discarded.hidden = !names.length;
  }

  function wait(ms) { return new Promise(function (resolve) { setTimeout(resolve, ms); }); }

  var waited = 0;

  function poll(statusUrl) {
    var what = "Checking the import's progress";
    return fetch(statusUrl, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .catch(function () { throw new Error(what + " failed: no answer from the server (network error)"); })
      .then(function (r) {
        return r.json().catch(function () { return null; }).then(function (body) {
          if (!r.ok || !body) throw new Error(what + " failed: " + answerText(r.status, body));
          return body;
        });
      })
      .then(function (state) {
        render(state);
        if (state.state === "FAILURE" || state.error) {
          phase.textContent = "Import failed";
          show(bar.value, "Checking the photos failed: " + (state.error || "the import task failed; see the worker log."));
          form.querySelector("button").disabled = false;
          return;
        }
        if (state.finished || state.state === "SUCCESS") {
          phase.textContent = "Import finished";
          show(100, (state.total || 0) + " photo(s) processed, " + (state.people_created || 0) + " new person(s).");
          renderFinished(state);
          form.querySelector("button").disabled = false;
          return;
        }
        if (state.total) show(100 * state.done / state.total, "Checked " + state.done + " of " + state.total + " photos");
        else if (state.state === "PENDING") {
          waited += 1;
          show(0, waited < 20 ? "Waiting for a worker…" :
            "Still waiting for a worker after " + waited + " s: is the Celery worker running? (./scripts/run starts one.)");
        } else show(0, "Starting…");
        return wait(1000).then(function () { return poll(statusUrl); });
      });
  }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    var folder = document.getElementById("import-folder").files;
    var zip = document.getElementById("import-zip").files[0];
    var images = Array.prototype.filter.call(folder || [], function (f) { return IMAGE.test(f.name); });
    if (!zip && !images.length) { window.alert("Choose a folder with photos or a zip archive first."); return; }
    var maxBytes = parseInt(form.getAttribute("data-max-bytes"), 10) || 0;
    if (zip && maxBytes && zip.size > maxBytes) {
      panel.hidden = false;
      phase.textContent = "Import failed";
      show(0, zip.name + " is " + size(zip.size) + "; one upload may hold at most " + size(maxBytes) +
        ". Split the archive, or choose the folder instead (it is sent in batches).");
      return;
    }
    form.querySelector("button").disabled = true;
    panel.hidden = false;
    results.hidden = true;
    discarded.hidden = true;
    recent.hidden = false;
    stats.textContent = "";
    phase.textContent = "Uploading…";
    show(0, "");
    (zip ? uploadZip(zip) : uploadFolder(images))
      .then(function (job) {
        phase.textContent = "Checking faces…";
        show(0, "Starting…");
        waited = 0;
        var base = uploadUrl.replace(/upload\/$/, "") + job + "/";
        // No body: the job is in the URL.
        return post(base + "start/", null, "Starting the import").then(function (body) { return poll(body.status_url); });
      })
      .catch(function (error) {
        phase.textContent = "Import failed";
        text.textContent = error.message;
        form.querySelector("button").disabled = false;
      });
  });
})();
