// The cuntong dashboard page: the region view arrives as `view` events on /api/live and is drawn
// as tables; a terminal's history comes from /api/terminal/ID and is drawn as SVG charts.
// The place is kept in the address (#r=REGION&t=TERMINAL) so a view can be bookmarked or shared.
"use strict";

const $ = (id) => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";
let source = null;
let place = { region: "", terminal: "" };
let detailTimer = null;

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    else if (k.startsWith("data-")) e.setAttribute(k, v);
    else e[k] = v;
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}

function readPlace() {
  const p = new URLSearchParams(location.hash.slice(1));
  return { region: p.get("r") || "", terminal: p.get("t") || "" };
}

function go(region, terminal) {
  const p = new URLSearchParams();
  if (region) p.set("r", region);
  if (terminal) p.set("t", terminal);
  location.hash = p.toString();
}

function ago(iso) {
  if (!iso) return "never";
  const s = Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 1000));
  if (s < 90) return s + " s ago";
  if (s < 5400) return Math.round(s / 60) + " min ago";
  if (s < 172800) return Math.round(s / 3600) + " h ago";
  return Math.round(s / 86400) + " d ago";
}

function fmt(v) {
  if (v === undefined || v === null) return "–";
  return Math.abs(v) >= 100 ? v.toFixed(0) : v.toFixed(2).replace(/\.?0+$/, "");
}

function connect() {
  if (source) source.close();
  const q = place.region ? "?region=" + encodeURIComponent(place.region) : "";
  source = new EventSource("api/live" + q);
  source.addEventListener("open", () => { $("link").className = ""; $("link").textContent = "live"; });
  source.addEventListener("error", () => { $("link").className = "down"; $("link").textContent = "reconnecting…"; });
  source.addEventListener("view", (e) => render(JSON.parse(e.data)));
}

function render(v) {
  document.body.dataset.region = v.region || "";
  const crumbs = $("crumbs");
  crumbs.replaceChildren(el("a", { href: "#", onclick: (e) => { e.preventDefault(); go("", ""); } }, "All"));
  v.parents.forEach((p, i) => {
    crumbs.append(" › ", el("a", { href: "#r=" + p, title: p }, v.parent_names[i] || p));
  });
  if (v.region) crumbs.append(" › ", el("span", { title: v.region }, v.name || v.region));

  const t = v.totals;
  const summary = $("summary");
  summary.dataset.terminals = t.terminals;
  summary.dataset.online = t.online;
  summary.dataset.offline = t.offline;
  summary.dataset.alarming = t.alarming;
  summary.replaceChildren(
    el("b", {}, t.terminals), " terminals · ",
    el("b", { class: "online" }, t.online), " online · ",
    el("b", { class: t.offline ? "offline" : "" }, t.offline), " offline · ",
    el("b", { class: t.alarming ? "alarming" : "" }, t.alarming), " alarming");

  $("tree-title").textContent = v.region ? (v.name || "") + " " + v.region : "Whole network";
  const regions = $("regions");
  regions.hidden = v.regions.length === 0;
  regions.tBodies[0].replaceChildren(...v.regions.map((r) => {
    const pct = r.terminals ? Math.round((100 * r.online) / r.terminals) : 0;
    const bar = el("div", { class: "bar", title: pct + "% online" });
    const fill = el("i");
    fill.style.width = pct + "%";
    bar.append(fill);
    return el("tr", { "data-region": r.code, onclick: () => go(r.code, "") },
      el("td", { class: "name" }, el("a", { href: "#r=" + r.code }, r.name)),
      el("td", { class: "muted" }, r.code),
      el("td", {}, r.level),
      el("td", {}, r.terminals),
      el("td", { class: "online" }, r.online),
      el("td", { class: r.offline ? "offline" : "" }, r.offline),
      el("td", { class: r.alarming ? "alarming" : "" }, r.alarming),
      el("td", {}, bar));
  }));

  const terminals = $("terminals");
  terminals.hidden = v.terminals.length === 0;
  terminals.tBodies[0].replaceChildren(...v.terminals.map((s) => el("tr",
    { "data-terminal": s.id, "data-online": String(s.online), "data-alarming": String(s.alarming),
      onclick: () => go(place.region, s.id) },
    el("td", { class: "name" }, s.name),
    el("td", { class: "muted" }, s.id),
    el("td", { class: s.online ? (s.alarming ? "alarming" : "online") : "offline" },
      s.online ? (s.alarming ? "alarm" : "online") : "offline"),
    el("td", { class: "muted" }, ago(s.last_seen)),
    el("td", {}, fmt(s.metrics["env.temp"])),
    el("td", {}, fmt(s.metrics["cpu.load"])),
    el("td", {}, fmt(s.metrics["link.rtt"])),
    el("td", {}, fmt(s.metrics["outbox.depth"])))));
  $("empty").hidden = v.regions.length + v.terminals.length > 0;

  $("alarm-count").textContent = v.alarms.length ? "(" + v.alarms.length + ")" : "";
  $("alarms").replaceChildren(...v.alarms.map(alarmItem));
  if (v.alarms.length === 0) $("alarms").append(el("li", { class: "muted none" }, "none"));
  $("meetings").replaceChildren(...v.meetings.map((m) =>
    el("li", { "data-meeting": m.id }, m.title, " ", el("span", { class: "muted" }, m.joined + " / " + m.sites + " joined · " + m.id))));
  if (v.meetings.length === 0) $("meetings").append(el("li", { class: "muted none" }, "none"));
}

function alarmItem(a) {
  const li = el("li", { "data-alarm": a.id, "data-kind": a.kind, "data-subject": a.subject },
    el("span", { class: "sev-" + a.severity }, a.severity), " ",
    a.kind, " · ", el("a", { href: subjectLink(a.subject), title: a.region_path }, a.name), " ",
    el("span", { class: "muted" }, a.subject), " ",
    el("span", { class: "muted" }, a.state + ", " + ago(a.raised_at)));
  if (a.detail) li.append(el("div", { class: "muted" }, a.detail));
  if (a.acknowledged_by) li.append(el("div", { class: "muted" }, "acknowledged by " + a.acknowledged_by));
  if (a.suppressed.length) li.append(el("div", { class: "muted" }, a.suppressed.length + " terminals folded in: " + a.suppressed.join(", ")));
  return li;
}

function subjectLink(subject) {
  const dash = subject.indexOf("-");
  if (dash < 0) return "#r=" + subject.replace(/(000)+$/, "").replace(/(00)+$/, "");
  return "#r=" + subject.slice(0, 9) + "&t=" + subject;
}

async function loadDetail() {
  clearTimeout(detailTimer);
  const id = place.terminal;
  $("detail").hidden = !id;
  if (!id) return;
  const hours = $("detail-hours").value;
  try {
    const r = await fetch("api/terminal/" + encodeURIComponent(id) + "?hours=" + hours);
    if (!r.ok) throw new Error(await r.text());
    const t = await r.json();
    if (place.terminal !== id) return;
    $("detail-title").textContent = t.name + " " + t.id;
    $("detail-title").title = t.region_path;
    $("detail").dataset.terminal = t.id;
    $("detail-info").textContent = (t.online ? "online" : "offline") + " · last seen " + ago(t.last_seen) +
      (t.version ? " · version " + t.version : "");
    $("detail-alarms").replaceChildren(...t.alarms.map(alarmItem));
    $("charts").replaceChildren(...Object.entries(t.series).map(([metric, points]) => chart(metric, points)));
    if (Object.keys(t.series).length === 0) $("charts").append(el("p", { class: "muted" }, "no samples in this period"));
  } catch (e) {
    $("detail-info").textContent = "cannot load " + id + ": " + e.message;
  }
  detailTimer = setTimeout(loadDetail, 10000);
}

function chart(metric, points) {
  const fig = el("figure", { "data-metric": metric });
  fig.append(el("figcaption", {}, metric + " ", el("span", { class: "muted" }, points.length ? "now " + fmt(points[points.length - 1][1]) : "")));
  const w = 600, h = 120, pad = 4;
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("class", "chart");
  svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
  svg.setAttribute("preserveAspectRatio", "none");
  if (points.length) {
    const t0 = points[0][0], t1 = points[points.length - 1][0];
    let lo = Infinity, hi = -Infinity;
    for (const [, v] of points) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
    if (hi === lo) { hi += 1; lo -= 1; }
    const x = (t) => pad + ((w - 2 * pad) * (t - t0)) / Math.max(1, t1 - t0);
    const y = (v) => h - pad - ((h - 2 * pad) * (v - lo)) / (hi - lo);
    const line = document.createElementNS(SVG, "polyline");
    line.setAttribute("points", points.map(([t, v]) => x(t).toFixed(1) + "," + y(v).toFixed(1)).join(" "));
    svg.append(line);
    for (const [v, yy] of [[hi, 12], [lo, h - 4]]) {
      const label = document.createElementNS(SVG, "text");
      label.setAttribute("x", "6");
      label.setAttribute("y", String(yy));
      label.textContent = fmt(v);
      svg.append(label);
    }
  }
  fig.append(svg);
  return fig;
}

function onPlace() {
  const next = readPlace();
  const regionChanged = next.region !== place.region || !source;
  place = next;
  if (regionChanged) connect();
  loadDetail();
}

// Rollouts change slowly: read every 5 s.
async function loadRollouts() {
  try {
    const r = await fetch("api/rollouts");
    if (!r.ok) return;
    const list = (await r.json()).slice(0, 10);
    $("rollouts").replaceChildren(...list.map((o) => {
      const c = o.counts;
      const failed = c["failed"] + c["rolled-back"] + c["timed-out"];
      const total = Object.values(c).reduce((a, b) => a + b, 0);
      const working = total - c["queued"] - c["committed"] - failed;
      return el("li", { "data-rollout": o.id, "data-state": o.state, title: o.reason || "" },
        o.version + " → " + o.region + " ",
        el("span", { class: o.state === "aborted" ? "alarming" : "muted" }, o.state),
        el("span", { class: "muted" }, " · " + c["committed"] + "/" + total + " committed · " +
          working + " at work · " + failed + " failed · #" + o.id));
    }));
    if (list.length === 0) $("rollouts").append(el("li", { class: "muted none" }, "none"));
  } catch (e) { /* the next round tries again */ }
}

window.addEventListener("hashchange", onPlace);
document.addEventListener("DOMContentLoaded", () => {
  $("detail-close").addEventListener("click", () => go(place.region, ""));
  $("detail-hours").addEventListener("change", loadDetail);
  onPlace();
  loadRollouts();
  setInterval(loadRollouts, 5000);
});
