// The regulator's national page: every DESCO's repayment health, Togo's regions on a map
// drawn from control/static/geo/togo-regions.geojson (plain SVG), and the month-by-month
// trend, from GET /v1/regulator/national: every figure a published open-data cell. What it drew is kept in window.cizoNational,
// window.cizoMap and window.cizoCharts, so tests can check it shows the API's numbers.
"use strict";

const pct = (x) => x == null ? "–" : num(100 * x, 1) + " %";
const kwh = (x) => x == null ? "–" : num(x, 1) + " kWh";
const count = (x) => x == null ? "–" : new Intl.NumberFormat("fr-FR").format(x);
let regionsGeo = null;

// lon/lat to the SVG's box, east-west shrunk by cos(latitude) so the shapes keep their form
function projection(features, w, h, pad) {
  const pts = features.flatMap((f) => f.geometry.coordinates.flat());
  const xs = pts.map((p) => p[0]), ys = pts.map((p) => p[1]);
  const [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
  const k = Math.cos(((y0 + y1) / 2) * Math.PI / 180);
  const s = Math.min((w - 2 * pad) / ((x1 - x0) * k), (h - 2 * pad) / (y1 - y0));
  const ox = (w - (x1 - x0) * k * s) / 2;
  return (p) => [ox + (p[0] - x0) * k * s, pad + (y1 - p[1]) * s];
}

function drawMap(regions) {
  const svg = $("map");
  svg.replaceChildren();
  const w = 320, h = 420;
  svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
  const feats = regionsGeo.features;
  const proj = projection(feats, w, h, 10);
  const byName = Object.fromEntries(regions.map((r) => [r.region, r]));
  const max = Math.max(1, ...regions.map((r) => r.kits_active || 0));
  const drawn = {};
  for (const f of feats) {
    const name = f.properties.region;
    const r = byName[name] || {};
    const d = f.geometry.coordinates.map((ring) =>
      "M" + ring.map((p) => proj(p).map((v) => v.toFixed(1)).join(" ")).join(" L") + " Z").join(" ");
    // suppressed cells are grey: no colour would say how few households were there
    const fill = r.kits_active == null ? "#ccc"
      : `hsl(210, 60%, ${Math.round(88 - 50 * r.kits_active / max)}%)`;
    const path = svgEl("path", { d, fill, "data-region": name });
    path.appendChild(svgEl("title", {}, `${name}: ${t("Active kits")} ${count(r.kits_active)}, ${kwh(r.energy_delivered_kwh)}`));
    svg.appendChild(path);
    const c = proj(centre(f.geometry.coordinates[0]));
    svg.appendChild(svgEl("text", { x: c[0], y: c[1], "text-anchor": "middle" }, name));
    svg.appendChild(svgEl("text", { x: c[0], y: c[1] + 12, "text-anchor": "middle" }, count(r.kits_active)));
    drawn[name] = { kits_active: r.kits_active ?? null, energy_delivered_kwh: r.energy_delivered_kwh ?? null };
  }
  window.cizoMap = { month: window.cizoNational.open_data.month, regions: drawn };
}

function centre(ring) {
  const n = ring.length;
  return [ring.reduce((a, p) => a + p[0], 0) / n, ring.reduce((a, p) => a + p[1], 0) / n];
}

function fillTables(v) {
  const rows = $("desco-rows");
  rows.replaceChildren();
  for (const d of v.health.descos) {
    const tr = document.createElement("tr");
    cell(tr, d.name);
    if (d.suppressed) {
      const td = document.createElement("td");
      td.colSpan = 5;
      td.textContent = t("suppressed (fewer than {n} households)", { n: v.min_households });
      tr.appendChild(td);
    } else {
      cell(tr, count(d.households));
      cell(tr, pct(d.repayment_rate));
      cell(tr, pct(d.par30));
      cell(tr, pct(d.default_rate));
      cell(tr, kwh(d.energy_delivered_kwh_30d));
    }
    rows.appendChild(tr);
  }
  const health = Object.fromEntries(v.health.regions.map((r) => [r.name, r]));
  const regionRows = $("region-rows");
  regionRows.replaceChildren();
  for (const r of v.open_data.regions) {
    const tr = document.createElement("tr");
    tr.dataset.region = r.region;
    cell(tr, r.region);
    cell(tr, count(r.kits_active));
    cell(tr, r.energy_delivered_kwh == null ? "–" : num(r.energy_delivered_kwh, 1));
    cell(tr, fcfa(r.payments_fcfa));
    cell(tr, count(health[r.region] ? health[r.region].households : null));
    regionRows.appendChild(tr);
  }
}

async function loadNational() {
  const v = await api("/v1/regulator/national");
  window.cizoNational = v;
  const nation = v.health.national;
  $("age").textContent = v.health.month
    ? t("Figures as published for {month} (open data: health file)", { month: v.health.month })
    : t("No health figures published yet.");
  $("t-households").textContent = count(nation.households);
  $("t-energy").textContent = kwh(nation.energy_delivered_kwh_30d);
  $("t-repay").textContent = pct(nation.repayment_rate);
  $("t-par30").textContent = pct(nation.par30);
  $("t-default").textContent = pct(nation.default_rate);
  $("map-title").textContent = v.open_data.month
    ? t("Kits and energy by region, {month} (open data)", { month: v.open_data.month })
    : t("No open data published yet.");
  fillTables(v);
  if (!regionsGeo) regionsGeo = await (await fetch("/static/geo/togo-regions.geojson")).json();
  drawMap(v.open_data.regions);
  const months = v.open_data.trend.map((m) => m.month);
  barChart($("c-trend-kits"), months, v.open_data.trend.map((m) => m.kits_active || 0), "#3b7dd8");
  barChart($("c-trend-energy"), months, v.open_data.trend.map((m) => m.energy_delivered_kwh || 0), "#2a9d55");
  barChart($("c-trend-paid"), months, v.open_data.trend.map((m) => m.payments_fcfa || 0), "#8e6bd8");
}

onKeyForm(() => whoAmI().then(loadNational));
onLanguageSwitch(() => act(() => whoAmI().then(loadNational)));
act(() => loadTexts().then(whoAmI).then(loadNational).then(() => { window.cizoReady = true; }));
setInterval(() => act(loadNational), 60000);
