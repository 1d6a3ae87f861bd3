// The run list's selection for bulk operations: one box ticks every run on the page; "every
// run matching this filter" replaces the ticks (they are greyed out, and not sent).
"use strict";

(function () {
  const all = document.getElementById("tick-all");
  const matching = document.getElementById("all-matching");
  const ticks = () => Array.from(document.querySelectorAll("input.tick"));
  if (all) {
    all.addEventListener("change", () => {
      for (const tick of ticks()) {
        tick.checked = all.checked;
      }
    });
  }
  if (matching) {
    matching.addEventListener("change", () => {
      for (const tick of [all, ...ticks()]) {
        if (tick) {
          tick.disabled = matching.checked;
        }
      }
    });
  }
})();
