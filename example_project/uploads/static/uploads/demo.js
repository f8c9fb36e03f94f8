// Renders the list of uploads and keeps it current by polling the JSON endpoint.
(function () {
  "use strict";

  var list = document.getElementById("uploads");
  var empty = document.getElementById("empty");
  var summary = document.getElementById("summary");
  var csrf = document.querySelector("[name=csrfmiddlewaretoken]").value;
  var ACTIVE = { pending: true, transferring: true };

  function human(bytes) {
    if (bytes === null || bytes === undefined) return "–";
    var units = ["B", "KB", "MB", "GB", "TB"];
    var i = 0;
    while (bytes >= 1024 && i < units.length - 1) { bytes /= 1024; i++; }
    return (i ? bytes.toFixed(1) : bytes) + " " + units[i];
  }

  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function withoutQuery(url) {
    return url ? url.split("?")[0] : url;
  }

  function action(item, verb, label) {
    var form = el("form");
    form.method = "post";
    form.action = "uploads/" + item.id + "/" + verb + "/";
    var token = el("input");
    token.type = "hidden";
    token.name = "csrfmiddlewaretoken";
    token.value = csrf;
    var button = el("button", "link " + verb, label);
    button.type = "submit";
    form.append(token, button);
    return form;
  }

  function build(item) {
    var row = el("li", "upload");
    row.dataset.id = item.id;
    row.dataset.name = item.name;
    var thumb = el("div", "thumb-box");
    if (item.kind === "image") {
      var img = el("img", "thumb");
      img.alt = item.name;
      thumb.append(img);
    } else {
      thumb.append(el("span", "file-icon", (item.name.split(".").pop() || "file").slice(0, 4)));
    }
    var body = el("div", "body");
    var head = el("div", "head");
    head.append(el("span", "name", item.name), el("span", "badge"));
    var meta = el("div", "meta");
    meta.append(el("span", "size"), el("span", "attempts"));
    var progress = el("div", "progress");
    progress.append(el("div", "bar"));
    var url = el("a", "url");
    url.target = "_blank";
    var error = el("div", "error");
    var actions = el("div", "actions");
    body.append(head, meta, progress, url, error, actions);
    row.append(thumb, body);
    return row;
  }

  function update(row, item) {
    row.dataset.state = item.state;
    var badge = row.querySelector(".badge");
    badge.textContent = item.state;
    badge.className = "badge " + item.state;
    row.querySelector(".size").textContent = human(item.size);
    row.querySelector(".attempts").textContent =
      item.attempts ? item.attempts + (item.attempts === 1 ? " attempt" : " attempts") : "";
    var pct = item.state === "remote" ? 100 :
      item.size ? Math.min(100, Math.round(100 * item.bytes_done / item.size)) : 0;
    var progress = row.querySelector(".progress");
    progress.hidden = item.state !== "transferring";
    progress.querySelector(".bar").style.width = pct + "%";
    progress.title = human(item.bytes_done) + " of " + human(item.size);
    var link = row.querySelector(".url");
    link.textContent = item.url || "";
    if (item.url) link.href = item.url;
    row.querySelector(".error").textContent = item.state === "failed" ? item.last_error : "";
    var img = row.querySelector("img.thumb");
    // A signed URL changes on every poll; reload the image only when the file moved.
    if (img && item.url && withoutQuery(img.getAttribute("src")) !== withoutQuery(item.url)) {
      img.src = item.url;
    }
    var actions = row.querySelector(".actions");
    if (actions.dataset.state !== item.state) {
      actions.dataset.state = item.state;
      actions.replaceChildren();
      if (item.state === "failed") actions.append(action(item, "retry", "Retry"));
      actions.append(action(item, "delete", "Delete"));
    }
  }

  function render(items) {
    var rows = {};
    Array.prototype.forEach.call(list.children, function (row) { rows[row.dataset.id] = row; });
    var counts = {};
    items.forEach(function (item, index) {
      var row = rows[item.id] || build(item);
      delete rows[item.id];
      update(row, item);
      if (list.children[index] !== row) list.insertBefore(row, list.children[index] || null);
      counts[item.state] = (counts[item.state] || 0) + 1;
    });
    Object.keys(rows).forEach(function (id) { rows[id].remove(); });
    empty.hidden = items.length > 0;
    summary.textContent = Object.keys(counts).sort().map(function (s) {
      return counts[s] + " " + s;
    }).join(" · ");
    return items.some(function (item) { return ACTIVE[item.state]; });
  }

  function poll() {
    fetch(list.dataset.api, { headers: { Accept: "application/json" } })
      .then(function (response) { return response.json(); })
      .then(function (data) { schedule(render(data.uploads)); })
      .catch(function () { schedule(false); });
  }

  function schedule(active) {
    window.setTimeout(poll, active ? 500 : 3000);
  }

  var initial = JSON.parse(document.getElementById("initial-uploads").textContent);
  schedule(render(initial));
})();
