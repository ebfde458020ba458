// Typesets the maths that pymdownx.arithmatex (generic mode) leaves in `.arithmatex` elements,
// with the KaTeX copy beside this file: the site renders formulas offline, fetching nothing.
(function () {
  "use strict";

  function typeset(root) {
    root.querySelectorAll(".arithmatex").forEach(function (el) {
      if (el.querySelector(".katex")) {
        return; // already typeset (the page was shown before)
      }
      var tex = el.textContent.trim();
      // arithmatex keeps the TeX delimiters: \( ... \) inline, \[ ... \] for blocks.
      if (/^\\[([]/.test(tex) && /\\[)\]]$/.test(tex)) {
        tex = tex.slice(2, -2);
      }
      // A bad formula shows as red source text, not as a broken page.
      katex.render(tex, el, { displayMode: el.tagName === "DIV", throwOnError: false });
    });
  }

  if (typeof document$ !== "undefined") {
    // mkdocs-material: runs on every page shown, including instant navigation.
    document$.subscribe(function () {
      typeset(document);
    });
  } else if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", function () {
      typeset(document);
    });
  } else {
    typeset(document);
  }
})();
