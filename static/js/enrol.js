/* Enrolment page: show that photos are being checked (detection takes a moment per photo). */
(function () {
  "use strict";
  var form = document.getElementById("photo-upload");
  if (!form) return;
  form.addEventListener("submit", function () {
    var button = form.querySelector("button[type=submit]");
    var input = form.querySelector("input[type=file]");
    var n = input && input.files ? input.files.length : 0;
    if (!n) return;
    button.textContent = button.getAttribute("data-busy-text") + " (" + n + ")";
    button.classList.add("busy");
    setTimeout(function () { button.disabled = true; }, 0);
  });
})();
