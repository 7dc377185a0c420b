// pymdownx.arithmatex (generic mode) wraps math in \( \) and \[ \] inside .arithmatex;
// KaTeX is bundled in docs/assets/katex, so the formulas render with no network.
(function () {
  "use strict";
  function render() {
    document.querySelectorAll(".arithmatex").forEach(function (el) {
      var tex = el.textContent.trim();
      var display = tex.startsWith("\\[") && tex.endsWith("\\]");
      if (display || (tex.startsWith("\\(") && tex.endsWith("\\)"))) {
        katex.render(tex.slice(2, -2), el, { displayMode: display, throwOnError: false });
      }
    });
  }
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", render);
  } else {
    render();
  }
})();
