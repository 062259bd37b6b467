// facesearch web UI: the only script. Forms marked data-busy show that they are working and
// are not submitted twice (a search takes a few seconds). Everything works without it.
"use strict";
document.addEventListener("submit", function (event) {
  var form = event.target;
  if (!(form instanceof HTMLFormElement) || !form.dataset.busy) return;
  if (form.dataset.sent === "1") { event.preventDefault(); return; }
  form.dataset.sent = "1";
  var button = form.querySelector("button[type=submit]");
  if (button) {
    button.textContent = form.dataset.busy;
    button.setAttribute("aria-disabled", "true");
  }
  form.setAttribute("aria-busy", "true");
});
