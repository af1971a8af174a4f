// The finance page (/finance): the suspense queue under maker-checker and the payments list.
// Buttons follow what GET /v1/dashboard/me says the key may do, read from the endpoints'
// own roles (support proposes, finance decides); the API still decides each call, and its
// refusal (maker-checker: never one's own proposal) is shown as it words it.
"use strict";
let me = null;
let paymentsBefore = null;

const canPropose = () => me && me.may.propose;
const canDecide = () => me && me.may.decide;
const seesSuspense = () => me && me.may.suspense;

// a status as the page words it (i18n.js CODES)
const statusText = (s) => label("payment_status", s);

async function loadMe() { me = await whoAmI(); }

function button(label, onClick) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = label;
  b.addEventListener("click", () => act(onClick));
  return b;
}

function proposalsCell(td, links) {
  for (const l of links) {
    const div = document.createElement("div");
    div.className = "link-row";
    div.dataset.link = l.link_id;
    const who = t("{kit} proposed by {who} ({reason})", { kit: l.kit_id ?? l.account_id,
                                                           who: l.proposed_by, reason: l.reason });
    const decided = l.decided_by ? " · " + t("{status} by {who}", { status: statusText(l.status),
                                                                    who: l.decided_by }) : "";
    div.append(who + decided);
    if (l.status === "proposed" && canDecide()) {
      div.append(button(t("Approve"), () => decide(l.link_id, "approve")),
                 button(t("Reject"), () => decide(l.link_id, "reject")));
    }
    td.appendChild(div);
  }
}

function proposeCell(td, paymentId) {
  if (!canPropose()) return;
  const kit = document.createElement("input");
  kit.size = 10; kit.maxLength = 64; kit.placeholder = t("kit id"); kit.className = "p-kit";
  const reason = document.createElement("input");
  reason.size = 18; reason.maxLength = 1000; reason.placeholder = t("Reason"); reason.className = "p-reason";
  td.append(kit, reason, button(t("Propose"), async () => {
    await post(`/v1/suspense/${paymentId}/links`, { account: kit.value.trim(), reason: reason.value.trim() });
    await loadSuspense();
  }));
}

async function decide(linkId, action) {
  await post(`/v1/suspense/links/${linkId}/${action}`, {});
  await Promise.all([loadSuspense(), loadPayments(true)]);
}

async function loadSuspense() {
  if (!seesSuspense()) {
    $("suspense-rows").replaceChildren();
    $("decision-rows").replaceChildren();
    return;
  }
  const [queue, links] = await Promise.all([api("/v1/suspense?limit=200"), api("/v1/suspense/links?limit=50")]);
  window.cizoFinance = Object.assign(window.cizoFinance || {}, { suspense: queue, links });
  const body = $("suspense-rows");
  body.replaceChildren();
  for (const p of queue) {
    const tr = document.createElement("tr");
    tr.dataset.payment = p.payment_id;
    cell(tr, when(p.received_at)); cell(tr, fcfa(p.amount_fcfa)); cell(tr, p.provider);
    cell(tr, p.reference); cell(tr, p.phone);
    cell(tr, reasonText(p.reason)).title = p.reason ?? "";
    proposalsCell(cell(tr, ""), p.links);
    proposeCell(cell(tr, ""), p.payment_id);
    body.appendChild(tr);
  }
  const db = $("decision-rows");
  db.replaceChildren();
  for (const l of links) {
    const tr = document.createElement("tr");
    tr.dataset.link = l.link_id;
    cell(tr, when(l.proposed_at)); cell(tr, l.kit_id); cell(tr, l.proposed_by); cell(tr, l.reason);
    codeCell(tr, "payment_status", l.status, "status-" + l.status); cell(tr, l.decided_by); cell(tr, when(l.decided_at));
    db.appendChild(tr);
  }
}

// a day typed in the form, as the first second of that day in Lomé (UTC+0 all year)
const dayStart = (v) => v ? Date.parse(v + "T00:00:00Z") / 1000 : null;

async function loadPayments(fromStart) {
  if (fromStart) paymentsBefore = null;
  const q = new URLSearchParams({ limit: "50" });
  if ($("p-status").value) q.set("status", $("p-status").value);
  if ($("p-provider").value) q.set("provider", $("p-provider").value);
  if ($("p-kit").value.trim()) q.set("kit_id", $("p-kit").value.trim());
  if ($("p-since").value) q.set("since", dayStart($("p-since").value));
  if ($("p-until").value) q.set("until", dayStart($("p-until").value) + 86400);
  if (paymentsBefore) q.set("before", paymentsBefore);
  const page = await api("/v1/payments?" + q);
  window.cizoFinance = Object.assign(window.cizoFinance || {}, { payments: page });
  const body = $("payment-rows");
  if (fromStart) body.replaceChildren();
  for (const p of page.items) {
    const tr = document.createElement("tr");
    cell(tr, when(p.created_at)); cell(tr, p.kit_id); cell(tr, fcfa(p.amount_fcfa ?? p.requested_fcfa));
    cell(tr, p.provider); codeCell(tr, "payment_status", p.status); cell(tr, p.phone); cell(tr, when(p.credited_at));
    body.appendChild(tr);
  }
  paymentsBefore = page.next_before;
  $("p-more").hidden = !paymentsBefore;
}

const loadAll = () => loadMe().then(() => Promise.all([loadSuspense(), loadPayments(true)]));

onKeyForm(loadAll);
$("pay-filters").addEventListener("submit", (ev) => { ev.preventDefault(); act(() => loadPayments(true)); });
$("p-more").addEventListener("click", () => act(() => loadPayments(false)));
onLanguageSwitch(() => act(loadAll));
act(() => loadTexts().then(loadAll).then(() => { window.cizoReady = true; }));
