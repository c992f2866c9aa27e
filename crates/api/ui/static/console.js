// The Switchyard run console's only script (served as a file: the CSP allows no inline
// script or handler). Two things, both optional — every page works without JavaScript:
//  - a button or link with `data-confirm` asks before it submits;
//  - a page whose <body> has `data-refresh="N"` (a run still moving) reloads every N seconds,
//    unless a form field has focus (someone is typing a comment).
"use strict";

document.addEventListener("click", function (ev) {
  var el = ev.target.closest ? ev.target.closest("[data-confirm]") : null;
  if (el && !window.confirm(el.getAttribute("data-confirm"))) {
    ev.preventDefault();
  }
});

document.addEventListener("DOMContentLoaded", function () {
  var secs = parseInt(document.body.getAttribute("data-refresh") || "", 10);
  if (secs > 0) {
    window.setInterval(function () {
      var a = document.activeElement;
      if (!a || !/^(INPUT|TEXTAREA|SELECT)$/.test(a.tagName)) {
        window.location.reload();
      }
    }, secs * 1000);
  }
});
