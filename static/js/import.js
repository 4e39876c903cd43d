/* Bulk import: upload a folder (in batches) or a zip with an upload progress bar, start the Celery
   task, then poll its progress until it finishes. */
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
  var recent = document.getElementById("import-recent");
  var IMAGE = /\.(jpe?g|png|webp)$/i;

  function post(url, data, onProgress) {
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
        else reject(new Error((body && body.error) || "Upload refused (" + xhr.status + ")"));
      };
      xhr.onerror = function () { reject(new Error("Network error during upload")); };
      xhr.send(data);
    });
  }

  function show(p, label) {
    bar.value = Math.max(0, Math.min(100, p));
    text.textContent = label;
  }

  function uploadFolder(files) {
    var total = files.reduce(function (s, f) { return s + f.size; }, 0) || 1;
    var sent = 0;
    var job = "";
    var batches = [];
    for (var i = 0; i < files.length; i += batchSize) batches.push(files.slice(i, i + batchSize));
    return batches.reduce(function (chain, batch) {
      return chain.then(function () {
        var data = new FormData();
        if (job) data.append("job", job);
        batch.forEach(function (f) {
          data.append("files", f);
          data.append("paths", f.webkitRelativePath || f.name);
        });
        var batchBytes = batch.reduce(function (s, f) { return s + f.size; }, 0);
        return post(uploadUrl, data, function (loaded) {
          show(100 * (sent + loaded) / total, "Uploaded " + Math.round((sent + loaded) / 1024) + " of " + Math.round(total / 1024) + " KiB");
        }).then(function (body) { job = body.job; sent += batchBytes; });
      });
    }, Promise.resolve()).then(function () { return job; });
  }

  function uploadZip(file) {
    var data = new FormData();
    data.append("archive", file);
    return post(uploadUrl, data, function (loaded) {
      show(100 * loaded / (file.size || 1), "Uploaded " + Math.round(loaded / 1024) + " of " + Math.round(file.size / 1024) + " KiB");
    }).then(function (body) { return body.job; });
  }

  function render(state) {
    ["accepted", "duplicates", "rejected", "errors"].forEach(function (k) {
      document.getElementById("n-" + k).textContent = state[k] || 0;
    });
    recent.textContent = "";
    (state.recent || []).slice().reverse().forEach(function (item) {
      var li = document.createElement("li");
      li.className = "status-" + item.status;
      li.textContent = item.person + "/" + item.file + ": " + item.status + (item.reason ? " (" + item.reason + ")" : "");
      recent.appendChild(li);
    });
  }

  function poll(statusUrl) {
    return fetch(statusUrl, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (r) { return r.json(); })
      .then(function (state) {
        render(state);
        if (state.state === "FAILURE" || state.error) {
          phase.textContent = "Import failed";
          show(bar.value, state.error || "The import failed.");
          return;
        }
        if (state.finished || state.state === "SUCCESS") {
          phase.textContent = "Import finished";
          show(100, (state.total || 0) + " photo(s) processed, " + (state.people_created || 0) + " new person(s).");
          form.querySelector("button").disabled = false;
          return;
        }
        if (state.total) show(100 * state.done / state.total, "Checked " + state.done + " of " + state.total + " photos");
        else show(0, state.state === "PENDING" ? "Waiting for a worker…" : "Starting…");
        return new Promise(function (resolve) { setTimeout(resolve, 1000); }).then(function () { return poll(statusUrl); });
      });
  }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    var folder = document.getElementById("import-folder").files;
    var zip = document.getElementById("import-zip").files[0];
    var images = Array.prototype.filter.call(folder || [], function (f) { return IMAGE.test(f.name); });
    if (!zip && !images.length) { window.alert("Choose a folder with photos or a zip archive first."); return; }
    form.querySelector("button").disabled = true;
    panel.hidden = false;
    phase.textContent = "Uploading…";
    show(0, "");
    (zip ? uploadZip(zip) : uploadFolder(images))
      .then(function (job) {
        phase.textContent = "Checking faces…";
        show(0, "Starting…");
        var base = uploadUrl.replace(/upload\/$/, "") + job + "/";
        return post(base + "start/", new FormData()).then(function (body) { return poll(body.status_url); });
      })
      .catch(function (error) {
        phase.textContent = "Import failed";
        text.textContent = error.message;
        form.querySelector("button").disabled = false;
      });
  });
})();
