/* The sample explorer of report.html: filters by true class, predicted class and correctness,
   and sorting by any column, over the rows inlined in each .rp-explorer. Text goes in through
   textContent; pictures are the report's own escaped markup. Nothing is fetched. */
(function () {
  "use strict";
  var PAGE = 60;

  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function fmt(v) {
    if (v === null || v === undefined) return "n/a";
    var a = Math.abs(v);
    if (a !== 0 && (a >= 1e5 || a < 1e-3)) return v.toExponential(3);
    return String(parseFloat(v.toPrecision(4)));
  }

  function select(cls, label, options) {
    var wrap = el("label", "", label + " "), sel = el("select", cls);
    options.forEach(function (o) {
      var opt = el("option", "", o[1]);
      opt.value = o[0];
      sel.appendChild(opt);
    });
    wrap.appendChild(sel);
    return [wrap, sel];
  }

  function init(root) {
    var data = JSON.parse(root.querySelector(".rp-data").textContent);
    var hint = root.querySelector(".rp-noscript");
    if (hint) hint.remove();
    var cols = data.columns, names = data.names, shown = PAGE;
    function name(c) {
      return Object.prototype.hasOwnProperty.call(names, String(c)) ? names[c] : String(c);
    }
    var classes = Object.keys(names).map(Number).sort(function (a, b) { return a - b; });
    var classOptions = [["", "any"]].concat(classes.map(function (c) { return [String(c), name(c)]; }));

    var controls = el("div", "rp-controls");
    var truth = null, correct = null;
    if (data.labelled) {
      var t = select("rp-f-true", "True class", classOptions);
      controls.appendChild(t[0]);
      truth = t[1];
    }
    var p = select("rp-f-pred", "Predicted", classOptions);
    controls.appendChild(p[0]);
    var predicted = p[1];
    if (data.labelled) {
      var c = select("rp-f-correct", "Prediction", [["", "any"], ["1", "correct"], ["0", "wrong"]]);
      controls.appendChild(c[0]);
      correct = c[1];
    }
    var pictured = Object.keys(data.pictures).length;
    var onlyPictures = null;
    if (pictured < data.rows.length) {
      var box = el("label", "", " only samples with pictures");
      onlyPictures = el("input", "rp-f-pictures");
      onlyPictures.type = "checkbox";
      onlyPictures.checked = true;
      box.insertBefore(onlyPictures, box.firstChild);
      controls.appendChild(box);
    }
    var sortOptions = [["-1", "sample number"]].concat(
      cols.map(function (col, i) {
        return [String(i), col.key + (col.better ? " (" + col.better + " is better)" : "")];
      })
    );
    var s = select("rp-sort", "Sort by", sortOptions);
    controls.appendChild(s[0]);
    var sort = s[1];
    var o = select("rp-order", "", []);
    controls.appendChild(o[0]);
    var order = o[1];
    root.appendChild(controls);
    var count = el("p", "rp-count");
    root.appendChild(count);
    var grid = el("div", "rp-cards");
    root.appendChild(grid);
    var more = el("button", "rp-more", "Show more");
    more.type = "button";
    root.appendChild(more);

    function setOrders() {
      var i = Number(sort.value), col = cols[i];
      var pairs = col && col.better
        ? [["worst", "worst first"], ["best", "best first"]]
        : [["desc", col ? "highest first" : "descending"], ["asc", col ? "lowest first" : "ascending"]];
      if (!col) pairs.reverse();
      order.textContent = "";
      pairs.forEach(function (pair) {
        var opt = el("option", "", pair[1]);
        opt.value = pair[0];
        order.appendChild(opt);
      });
    }

    function matches(row) {
      if (truth && truth.value !== "" && row[1] !== Number(truth.value)) return false;
      if (predicted.value !== "" && row[2] !== Number(predicted.value)) return false;
      if (correct && correct.value !== "" && (row[1] === row[2]) !== (correct.value === "1")) return false;
      if (onlyPictures && onlyPictures.checked && !data.pictures[String(row[0])]) return false;
      return true;
    }

    function sorted(rows) {
      var i = Number(sort.value), col = cols[i], how = order.value;
      var descending = how === "desc" || (col && col.better && (how === "worst") === (col.better === "lower"));
      var at = i < 0 ? 0 : 3 + i;
      return rows.slice().sort(function (a, b) {
        var x = a[at], y = b[at];
        if (x === null || y === null) return x === y ? a[0] - b[0] : x === null ? 1 : -1;
        if (x === y) return a[0] - b[0];
        return descending ? y - x : x - y;
      });
    }

    function card(row) {
      var node = el("div", "rp-card");
      node.setAttribute("data-sample", String(row[0]));
      var picture = data.pictures[String(row[0])];
      if (picture) {
        node.innerHTML = picture; // the report's own markup, escaped when written
        if (picture.indexOf("rp-tokens") >= 0) node.classList.add("rp-wide");
      } else {
        node.appendChild(el("div", "rp-nopic", "no picture"));
      }
      var cap = el("div", "rp-cap");
      cap.appendChild(el("b", "", "#" + row[0]));
      var verdict = "pred " + name(row[2]);
      var state = "", mark = "";
      if (data.labelled) {
        verdict = "true " + name(row[1]) + " \u00b7 " + verdict;
        state = row[1] === row[2] ? "rp-ok" : "rp-bad";
        mark = row[1] === row[2] ? "\u2713" : "\u2717";
      }
      cap.appendChild(document.createTextNode(" "));
      cap.appendChild(el("b", state, mark));
      cap.appendChild(el("span", state, verdict));
      var i = Number(sort.value);
      var first = cols.findIndex(function (col) { return col.better && !col.flag; });
      var col = i >= 0 ? i : first;
      if (col >= 0) {
        var value = el("span", "rp-value", fmt(row[3 + col]));
        value.title = cols[col].key;
        cap.appendChild(value);
      }
      node.appendChild(cap);
      return node;
    }

    function render() {
      var rows = sorted(data.rows.filter(matches));
      grid.textContent = "";
      rows.slice(0, shown).forEach(function (row) {
        grid.appendChild(card(row));
      });
      var total = data.rows.length;
      count.textContent =
        rows.length + " of " + total + " listed samples match" +
        (rows.length > shown ? "; showing the first " + shown : "") + ".";
      more.style.display = rows.length > shown ? "" : "none";
    }

    sort.value = String(data.sort);
    setOrders();
    sort.addEventListener("change", function () {
      setOrders();
      shown = PAGE;
      render();
    });
    [truth, predicted, correct, order, onlyPictures].forEach(function (control) {
      if (control)
        control.addEventListener("change", function () {
          shown = PAGE;
          render();
        });
    });
    more.addEventListener("click", function () {
      shown += PAGE;
      render();
    });
    render();
  }

  Array.prototype.forEach.call(document.querySelectorAll(".rp-explorer"), init);
})();
