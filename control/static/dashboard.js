// The fleet page (#/fleet) and the kit page (#/kit/<id>), over the /v1 API (api.js); texts,
// amounts and dates through i18n.js.
"use strict";
let me = null;

const pct = (x) => x == null ? "–" : num(100 * x, 1) + " %";

// one row per event of the kit's timeline, newest first
function showTimeline(tl) {
  // what an event's summary is, by the event's kind
  const summaryKind = { payment: "payment_status", command_issued: "command_action",
                        command_applied: "command_action", audit: "audit_action",
                        alert_opened: "alert_kind", alert_closed: "alert_kind" };
  $("k-timeline-note").textContent = tl.telemetry_checked ? ""
    : t("Telemetry store unavailable: gaps in the readings are not shown.");
  const body = $("k-timeline");
  body.replaceChildren();
  for (const e of tl.items) {
    const tr = document.createElement("tr");
    tr.dataset.kind = e.kind;
    const d = e.detail || {};
    const detail = e.kind === "payment" ? `${fcfa(d.amount_fcfa)} · ${d.provider}`
      : e.kind === "telemetry_gap" ? t("until {when} ({hours} h)", { when: when(e.until), hours: num(d.seconds / 3600, 1) })
      : e.kind === "audit" ? [d.actor, d.reason].filter(Boolean).join(" · ")
      : e.kind.startsWith("command") ? `#${d.seq} · ${label("command_origin", d.origin)}`
      : d.by || label("alert_state", d.state);
    cell(tr, when(e.at)); codeCell(tr, "timeline_kind", e.kind);
    if (e.kind === "telemetry_gap") cell(tr, "");
    else codeCell(tr, summaryKind[e.kind], e.summary);
    cell(tr, detail);
    body.appendChild(tr);
  }
}

// an alert's kind, description and state, in the page's language (the codes in titles)
function alertCells(tr, a) {
  codeCell(tr, "alert_kind", a.kind);
  const td = cell(tr, alertText(a));
  if (a.detail) td.title = a.detail;
  codeCell(tr, "alert_state", a.state, "state-" + a.state);
}

function route() {
  const h = location.hash || "#/fleet";
  const m = h.match(/^#\/kit\/(.+)$/);
  $("fleet-page").hidden = !!m;
  $("kit-page").hidden = !m;
  return m ? loadKit(decodeURIComponent(m[1])) : loadFleet();
}

async function loadMe() { me = await whoAmI(); }

function fillSelect(sel, values) {
  const current = sel.value;
  sel.replaceChildren(new Option(t("all"), ""));
  for (const v of values) sel.appendChild(new Option(v, v));
  sel.value = values.includes(current) ? current : "";
}

async function loadFleet() {
  const q = new URLSearchParams();
  if ($("f-desco").value) q.set("desco_id", $("f-desco").value);
  if ($("f-region").value) q.set("region", $("f-region").value);
  const f = await api("/v1/dashboard/fleet?" + q);
  window.cizoFleet = f;
  fillSelect($("f-desco"), f.descos);
  fillSelect($("f-region"), f.regions);
  $("age").textContent = t("figures {age} s old (computed {when})",
                           { age: Math.round(f.age_s), when: when(f.computed_at) });
  $("t-kits").textContent = f.kits;
  $("t-today").textContent = fcfa(f.payments_today_fcfa);
  $("t-month").textContent = fcfa(f.payments_month_fcfa);
  $("t-repay").textContent = pct(f.repayment_rate);
  $("t-par30").textContent = pct(f.par30);
  $("t-energy").textContent = num(f.energy_wh_30d / 1000, 1) + " kWh";
  $("t-alerts").textContent = f.open_alerts_total;
  barChart($("c-online"), [t("online"), t("offline")], [f.online, f.offline], "#2a9d55");
  barChart($("c-state"), [t("locked"), t("unlocked"), t("owned"), t("unknown")],
           [f.locked, f.unlocked, f.owned, f.unknown], "#3b7dd8");
  const hb = ["90-100", "80-90", "70-80", "<70", "unknown"];
  barChart($("c-health"), hb.map((b) => b === "unknown" ? t("unknown") : b), hb.map((b) => f.battery_health[b] || 0), "#8e6bd8");
  const kinds = ["power_while_locked", "capacity_fading", "pv_below_neighbours", "silent"];
  barChart($("c-alerts"), [t("locked power"), t("fading"), t("low PV"), t("silent")],
           kinds.map((k) => f.open_alerts[k] || 0), "#d8563b");
  if (me && me.may.alerts) {
    const alerts = await api("/v1/alerts?state=open&limit=50");
    const body = $("alert-rows");
    body.replaceChildren();
    for (const a of alerts.items) {
      const tr = document.createElement("tr");
      const td = cell(tr, "");
      const link = document.createElement("a");
      link.href = "#/kit/" + encodeURIComponent(a.kit_id);
      link.textContent = a.kit_id;
      td.appendChild(link);
      alertCells(tr, a);
      cell(tr, when(a.opened_at));
      body.appendChild(tr);
    }
  }
}

async function loadKit(kitId) {
  const [k, tel, audit, timeline] = await Promise.all([
    api("/v1/dashboard/kits/" + encodeURIComponent(kitId)),
    api("/v1/dashboard/kits/" + encodeURIComponent(kitId) + "/telemetry?hours=72"),
    api("/v1/kits/" + encodeURIComponent(kitId) + "/audit?limit=50"),
    api("/v1/kits/" + encodeURIComponent(kitId) + "/timeline?hours=72"),
  ]);
  window.cizoKit = { kit: k, telemetry: tel, audit, timeline };
  showTimeline(timeline);
  $("k-title").textContent = t("Kit {kit_id}", { kit_id: k.kit_id });
  const state = k.owned ? "owned" : k.locked == null ? "state unknown" : k.locked ? "locked" : "unlocked";
  $("k-facts").textContent = [k.desco_id, k.region, t(k.online ? "online" : "offline"), t(state),
    t("credit until {when}", { when: when(k.credit_until) }),
    t("paid {paid} of {total}", { paid: fcfa(k.paid_total_fcfa), total: fcfa(k.total_price_fcfa) }),
  ].join(" · ");
  const x = tel.points.map((p) => p.t);
  lineChart($("c-soc"), x, [{ name: "soc", values: tel.points.map((p) => p.soc), color: "#2a9d55" }],
            { ymin: 0, ymax: 100 });
  lineChart($("c-power"), x, [
    { name: "pv_w", values: tel.points.map((p) => p.pv_w), color: "#e08a00" },
    { name: "load_w", values: tel.points.map((p) => p.load_w), color: "#3b7dd8" },
  ], { ymin: 0 });
  $("unlock-box").hidden = !(me && me.may.unlock);
  const m = k.metrics;
  const mt = $("k-metrics");
  mt.replaceChildren();
  const rows = m ? [
    [t("Solvency score (0–100)"), m.solvency_score],
    [t("… payments in window"), m.solvency_inputs && m.solvency_inputs.payments],
    [t("… paid before credit ran out"), m.solvency_inputs && pct(m.solvency_inputs.on_time_share)],
    [t("… days locked / window days"), m.solvency_inputs &&
      `${m.solvency_inputs.locked_days} / ${m.solvency_inputs.window_days}`],
    [t("… days used / credited days"), m.solvency_inputs &&
      `${m.solvency_inputs.used_days ?? t("no data")} / ${m.solvency_inputs.credited_days}`],
    [t("Energy delivered, 30 days"), m.energy_wh_30d == null ? null : num(m.energy_wh_30d / 1000, 2) + " kWh"],
    [t("Battery health"), m.battery_health_pct == null ? null : m.battery_health_pct + " %"],
    [t("Household pattern"), m.load_pattern, "load_pattern"], [t("Sizing"), m.sizing, "sizing"],
    [t("Computed"), when(m.computed_at)],
  ] : [[t("Analytics"), t("not computed yet")]];
  for (const [name, value, kind] of rows) {
    const tr = document.createElement("tr");
    cell(tr, name);
    if (kind) codeCell(tr, kind, value); else cell(tr, value);
    mt.appendChild(tr);
  }
  const at = $("k-alerts");
  at.replaceChildren();
  for (const a of k.alerts) {
    const tr = document.createElement("tr");
    alertCells(tr, a); cell(tr, when(a.opened_at));
    const td = cell(tr, "");
    if (me && me.may.alert_change) {
      for (const [action, label, from] of [["acknowledge", "Acknowledge", ["open"]],
                                           ["close", "Close", ["open", "acknowledged"]]]) {
        if (!from.includes(a.state)) continue;
        const b = document.createElement("button");
        b.textContent = t(label);
        b.dataset.alert = a.id;
        b.addEventListener("click", () => act(() => api(`/v1/alerts/${a.id}/${action}`, { method: "POST" })
          .then(() => loadKit(kitId))));
        td.appendChild(b);
      }
    }
    at.appendChild(tr);
  }
  const lt = $("k-ledger");
  lt.replaceChildren();
  for (const e of k.ledger) {
    const tr = document.createElement("tr");
    cell(tr, when(e.created_at)); codeCell(tr, "ledger_kind", e.kind); cell(tr, fcfa(e.amount_fcfa)); cell(tr, e.days);
    cell(tr, when(e.credit_until_after));
    lt.appendChild(tr);
  }
  const ct = $("k-commands");
  ct.replaceChildren();
  for (const c of k.commands) {
    const tr = document.createElement("tr");
    cell(tr, c.seq); codeCell(tr, "command_action", c.action);
    codeCell(tr, "command_origin", c.origin); codeCell(tr, "command_status", c.status);
    cell(tr, when(c.created_at)); cell(tr, when(c.sent_at)); cell(tr, when(c.finished_at)); cell(tr, c.attempts);
    ct.appendChild(tr);
  }
  const au = $("k-audit");
  au.replaceChildren();
  for (const e of audit.items) {
    const tr = document.createElement("tr");
    cell(tr, when(e.at)); cell(tr, e.actor); cell(tr, e.role); codeCell(tr, "audit_action", e.action); cell(tr, e.reason);
    au.appendChild(tr);
  }
}

$("unlock-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const kitId = decodeURIComponent(location.hash.replace(/^#\/kit\//, ""));
  act(async () => {
    const out = await post("/v1/kits/" + encodeURIComponent(kitId) + "/unlock",
                           { days: Number($("u-days").value), reason: $("u-reason").value });
    $("u-result").textContent = t("unlocked: credit until {when}", { when: when(out.credit_until) }) +
      (out.command_id ? t(", command {command_id}", { command_id: out.command_id }) : "");
    await loadKit(kitId);
  });
});
onKeyForm(() => loadMe().then(route));
$("filters").addEventListener("change", () => act(loadFleet));
$("filters").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const k = $("f-kit").value.trim();
  if (k) location.hash = "#/kit/" + encodeURIComponent(k);
});
onLanguageSwitch(() => act(() => loadMe().then(route)));
window.addEventListener("hashchange", () => act(route));
act(() => loadTexts().then(loadMe).then(route).then(() => { window.cizoReady = true; }));
setInterval(() => { if (!$("fleet-page").hidden) act(loadFleet); }, 30000);
