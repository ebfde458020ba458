/* The view of saliency.viz.view: saliencyView(root) reads the JSON in root's .sv-data element
   and builds the view inside root. Nothing is fetched; text goes in through textContent only. */
var saliencyView = (function () {
  "use strict";

  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  // Int16 codes (little endian, base64) back to values: code * scale / 32767.
  function decode(table) {
    var bin = atob(table.codes), n = bin.length / 2, out = new Float32Array(n);
    for (var i = 0; i < n; i++) {
      var c = bin.charCodeAt(2 * i) | (bin.charCodeAt(2 * i + 1) << 8);
      if (c >= 32768) c -= 65536;
      out[i] = (c * table.scale) / 32767;
    }
    return out;
  }

  function fmt(v) {
    if (v === null || v === undefined) return "n/a";
    if (v === 0) return "0";
    var a = Math.abs(v);
    var s = a >= 1e4 || a < 1e-3 ? a.toExponential(2) : String(parseFloat(a.toPrecision(3)));
    return (v < 0 ? "\u2212" : "+") + s;
  }

  function index(v, clip, signed) {
    var t = clip > 0 ? v / clip : 0;
    if (signed) return Math.round(Math.max(-1, Math.min(1, t)) * 127.5 + 127.5);
    return Math.round(Math.max(0, Math.min(1, t)) * 255);
  }

  function colour(data, v, clip) {
    var i = 3 * index(v, clip, data.signed);
    return [data.lut[i], data.lut[i + 1], data.lut[i + 2]];
  }

  function css(rgb) {
    return "rgb(" + rgb[0] + "," + rgb[1] + "," + rgb[2] + ")";
  }

  function ink(rgb) {
    return 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2] >= 128 ? "#000" : "#fff";
  }

  function paint(canvas, data, values, clip) {
    var h = data.height, w = data.width, ctx = canvas.getContext("2d");
    canvas.width = w;
    canvas.height = h;
    var image = ctx.createImageData(w, h);
    for (var i = 0; i < h * w; i++) {
      var rgb = colour(data, values[i], clip);
      image.data[4 * i] = rgb[0];
      image.data[4 * i + 1] = rgb[1];
      image.data[4 * i + 2] = rgb[2];
      image.data[4 * i + 3] = 255;
    }
    ctx.putImageData(image, 0, 0);
  }

  return function (root) {
    if (!root || root.getAttribute("data-ready")) return;
    root.setAttribute("data-ready", "1");
    var data = JSON.parse(root.querySelector(".sv-data").textContent);
    var image = data.kind === "image";
    var decoded = {};
    var state = { s: 0, k: 0, scale: "map" };

    function name(c) {
      return Object.prototype.hasOwnProperty.call(data.names, String(c)) ? data.names[c] : String(c);
    }
    function sample() {
      return data.samples[state.s];
    }
    function values(s, k) {
      var key = s + ":" + k;
      if (!decoded[key]) decoded[key] = decode(data.samples[s].maps[k]);
      return decoded[key];
    }
    function clip(s, k) {
      var e = data.samples[s];
      return state.scale === "map" ? e.clip[k] : Math.max.apply(null, e.clip);
    }
    function role(e, c) {
      var roles = [];
      if (c === e.predicted) roles.push("predicted");
      if (e.label !== null && c === e.label) roles.push("true");
      return roles.join(", ");
    }
    function sampleText(e) {
      var t = "#" + e.index;
      if (e.label !== null) t += " \u00b7 true " + name(e.label);
      t += " \u00b7 predicted " + name(e.predicted);
      if (e.label !== null) t += e.label === e.predicted ? " \u2713" : " \u2717";
      return t;
    }
    function classText(e, k) {
      var c = e.classes[k], r = role(e, c), t = name(c);
      if (r) t += " (" + r + ")";
      if (e.scores[k] !== null) t += " \u00b7 " + data.output + " " + fmt(e.scores[k]);
      return t;
    }

    root.querySelector(".sv-static").style.display = "none";

    // -- controls ------------------------------------------------------------------------------
    var controls = el("div", "sv-controls");
    var sampleSel = el("select", "sv-sample"), classSel = el("select", "sv-class");
    var scaleSel = el("select", "sv-scale");
    data.samples.forEach(function (e, s) {
      var o = el("option", "", sampleText(e));
      o.value = String(s);
      sampleSel.appendChild(o);
    });
    [
      ["map", "this map"],
      ["sample", "shared by the sample's classes"],
    ].forEach(function (pair) {
      var o = el("option", "", pair[1]);
      o.value = pair[0];
      scaleSel.appendChild(o);
    });
    [
      ["Sample", sampleSel],
      ["Class", classSel],
      ["Colour scale", scaleSel],
    ].forEach(function (pair) {
      var label = el("label", "", pair[0] + " ");
      label.appendChild(pair[1]);
      controls.appendChild(label);
    });
    root.appendChild(controls);

    // -- the selected map, the input under it, and the side panel -------------------------------
    var main = el("div", "sv-main"), figure = el("div", "sv-figure"), side = el("div", "sv-side");
    var canvas = null, input = null, markers = [], tokenBox = null;
    var zoom = image ? Math.max(1, Math.floor(288 / Math.max(data.width, data.height))) : 1;
    function cell(child, caption) {
      var box = el("div", "sv-cell"), marker = el("div", "sv-marker");
      child.style.width = data.width * zoom + "px";
      child.style.height = data.height * zoom + "px";
      box.appendChild(child);
      box.appendChild(marker);
      markers.push(marker);
      figure.appendChild(box);
      figure.appendChild(el("div", "sv-caption", caption));
      return box;
    }
    if (image) {
      canvas = el("canvas", "sv-map");
      if (data.width <= 64) canvas.classList.add("sv-pixelated");
      cell(canvas, "");
      if (sample().input) {
        input = el("img", "sv-input");
        input.alt = "input";
        if (data.width <= 64) input.classList.add("sv-pixelated");
        cell(input, "input");
      } else {
        figure.appendChild(el("p", "sv-note", "Pass the inputs (viz.view(attribution, x)) to see them under the maps."));
      }
    } else {
      tokenBox = el("div", "sv-tokens");
      figure.appendChild(tokenBox);
    }
    var info = el("div", "sv-info"), legend = el("div", "sv-legend");
    var bar = el("div", "sv-bar"), ticks = el("div", "sv-ticks"), legendText = el("div", "sv-note");
    bar.style.background = data.bar;
    legend.appendChild(bar);
    legend.appendChild(ticks);
    legend.appendChild(legendText);
    var readout = el("div", "sv-readout");
    side.appendChild(info);
    side.appendChild(legend);
    side.appendChild(readout);
    main.appendChild(figure);
    main.appendChild(side);
    root.appendChild(main);
    var strip = el("div", "sv-strip");
    root.appendChild(strip);
    var limits = [];
    if (data.total.samples > data.samples.length)
      limits.push(data.samples.length + " of " + data.total.samples + " samples");
    if (data.samples.some(function (e) { return e.classes.length < data.total.classes; }))
      limits.push("at most " + data.samples[0].classes.length + " of " + data.total.classes + " classes per sample (predicted, true, then the highest " + data.output + ")");
    if (limits.length) root.appendChild(el("p", "sv-note", "Showing " + limits.join("; ") + "."));
    if (data.block > 1)
      root.appendChild(el("p", "sv-note", "Maps and inputs averaged over blocks of " + data.block + "\u00d7" + data.block + " pixels to keep the page small."));

    var idle = image ? "Point at the map or the input to read a value." : "Point at a token to read its score.";
    function read(text) {
      readout.textContent = text || idle;
    }

    function hover(event) {
      var rect = event.currentTarget.getBoundingClientRect();
      var col = Math.floor(((event.clientX - rect.left) / rect.width) * data.width);
      var row = Math.floor(((event.clientY - rect.top) / rect.height) * data.height);
      if (col < 0 || row < 0 || col >= data.width || row >= data.height) return;
      var v = values(state.s, state.k)[row * data.width + col];
      var where = "row " + row + ", column " + col;
      if (data.block > 1)
        where = "rows " + row * data.block + "\u2013" + ((row + 1) * data.block - 1) + ", columns " + col * data.block + "\u2013" + ((col + 1) * data.block - 1) + " (block mean)";
      read("Class " + name(sample().classes[state.k]) + ", " + where + ": " + fmt(v));
      var cw = rect.width / data.width, ch = rect.height / data.height;
      markers.forEach(function (m) {
        m.style.display = "block";
        m.style.left = col * cw + "px";
        m.style.top = row * ch + "px";
        m.style.width = cw + "px";
        m.style.height = ch + "px";
      });
    }
    function leave() {
      read("");
      markers.forEach(function (m) {
        m.style.display = "none";
      });
    }
    Array.prototype.forEach.call(figure.querySelectorAll(".sv-cell"), function (box) {
      box.firstChild.addEventListener("mousemove", hover);
      box.firstChild.addEventListener("mouseleave", leave);
    });

    function renderLegend() {
      var c = clip(state.s, state.k);
      ticks.textContent = "";
      (data.signed ? [-c, 0, c] : [0, c]).forEach(function (v) {
        ticks.appendChild(el("span", "", fmt(v)));
      });
      legendText.textContent =
        "Colour: the map's value; beyond " + (data.signed ? "\u00b1" : "") + fmt(c).replace("+", "") +
        " at full colour (the 99th percentile of |value| of " +
        (state.scale === "map" ? "this map" : "the sample's maps") + ").";
    }

    function renderTokens() {
      var e = sample(), v = values(state.s, state.k), c = clip(state.s, state.k);
      tokenBox.textContent = "";
      e.tokens.forEach(function (t, i) {
        var rgb = colour(data, v[i], c), span = el("span", "sv-token", t);
        span.style.background = css(rgb);
        span.style.color = ink(rgb);
        span.title = t + ": " + fmt(v[i]);
        span.addEventListener("mouseenter", function () {
          read("\u201c" + t + "\u201d (position " + i + "): " + fmt(v[i]));
        });
        span.addEventListener("mouseleave", function () {
          read("");
        });
        tokenBox.appendChild(span);
      });
    }

    function renderStrip() {
      var e = sample();
      strip.textContent = "";
      var thumb = image ? Math.max(1, Math.floor(72 / Math.max(data.width, data.height))) : 0;
      e.classes.forEach(function (c, k) {
        var button = el("button", "sv-thumb" + (k === state.k ? " sv-selected" : ""));
        button.type = "button";
        button.setAttribute("data-class", String(c));
        if (image) {
          var small = el("canvas", data.width <= 64 ? "sv-pixelated" : "");
          paint(small, data, values(state.s, k), clip(state.s, k));
          small.style.width = data.width * thumb + "px";
          small.style.height = data.height * thumb + "px";
          button.appendChild(small);
        }
        var r = role(e, c);
        button.appendChild(el("span", "sv-thumb-name", name(c) + (r ? " \u00b7 " + r : "")));
        if (e.scores[k] !== null) button.appendChild(el("span", "sv-thumb-score", fmt(e.scores[k])));
        button.addEventListener("click", function () {
          state.k = k;
          render();
        });
        strip.appendChild(button);
      });
    }

    function render() {
      var e = sample();
      classSel.textContent = "";
      e.classes.forEach(function (c, k) {
        var o = el("option", "", classText(e, k));
        o.value = String(k);
        classSel.appendChild(o);
      });
      classSel.value = String(state.k);
      sampleSel.value = String(state.s);
      info.textContent = "";
      info.appendChild(el("div", "sv-title", "Sample #" + e.index + " \u00b7 " + data.method));
      var verdict = "Predicted: " + name(e.predicted);
      if (e.label !== null)
        verdict = "True class: " + name(e.label) + " \u00b7 " + verdict + (e.label === e.predicted ? " \u2713" : " \u2717");
      info.appendChild(el("div", "sv-verdict", verdict));
      info.appendChild(el("div", "sv-shown", "Map of class " + classText(e, state.k)));
      if (image) {
        paint(canvas, data, values(state.s, state.k), clip(state.s, state.k));
        figure.querySelector(".sv-caption").textContent = "map of class " + name(e.classes[state.k]);
        if (input) input.src = e.input;
      } else {
        renderTokens();
      }
      renderLegend();
      renderStrip();
      read("");
    }

    sampleSel.addEventListener("change", function () {
      state.s = Number(sampleSel.value);
      state.k = 0;
      render();
    });
    classSel.addEventListener("change", function () {
      state.k = Number(classSel.value);
      render();
    });
    scaleSel.addEventListener("change", function () {
      state.scale = scaleSel.value;
      render();
    });
    render();
  };
})();
