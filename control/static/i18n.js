// The web pages' language, shared by the kit list (/) and the dashboard (/dashboard).
// Texts come from the server's catalog (GET /i18n/dashboard, cizo/locale/*.po) in the
// language of the page's FR/EN switch, else the one the browser's Accept-Language gets.
"use strict";
const LANG_KEY = "cizo_lang";
let locale = "fr";
let messages = {};

// msgid -> its text in the chosen language, "{name}" fields filled from params
function t(msgid, params) {
  const text = messages[msgid] || msgid;
  return text.replace(/\{(\w+)\}/g, (all, name) => params && name in params ? String(params[name]) : all);
}

// a number with the page language's decimal mark ("1,2" in French)
const num = (x, digits) => new Intl.NumberFormat(locale === "fr" ? "fr-FR" : "en-GB", {
  minimumFractionDigits: digits, maximumFractionDigits: digits }).format(x);

// marks a msgid translated where it is shown, by t(), as N_() does in cizo/i18n.py
const N_ = (msgid) => msgid;

// The API's codes are its contract and stay English in its JSON; a page shows each through
// one of these tables (kind of code -> code -> msgid of the catalog), via label().
const CODES = {
  alert_kind: { power_while_locked: N_("power drawn while locked"),
                capacity_fading: N_("capacity fading"),
                pv_below_neighbours: N_("PV below its neighbours'"), silent: N_("silent") },
  alert_state: { open: N_("open"), acknowledged: N_("acknowledged"),
                 closed: N_("closed") },
  ledger_kind: { deposit: N_("deposit"), payment: N_("payment"), free_days: N_("free days"),
                 credit_set: N_("credit date set"), repossess: N_("repossession"),
                 reversal: N_("reversal") },
  command_action: { unlock: N_("unlock"), lock: N_("lock"),
                    own: N_("ownership"), rotate: N_("key rotation"),
                    protocol: N_("protocol change") },
  command_status: { queued: N_("queued"), sent: N_("sent"), applied: N_("applied"),
                     rejected: N_("rejected"), expired: N_("expired"),
                     superseded: N_("superseded") },
  command_origin: { sweep: N_("automatic (credit check)"), payment: N_("payment"),
                    support: N_("support staff"), correction: N_("correction") },
  payment_status: { initiated: N_("initiated"), pending: N_("pending"), credited: N_("credited"),
                    suspense: N_("in suspense"), failed: N_("failed"), reversed: N_("reversed"),
                    proposed: N_("proposed"), approved: N_("approved"), rejected: N_("rejected") },
  audit_action: {
    "account.close": N_("account closed"),
    "account.erase_personal_data": N_("personal data erased"),
    "alert.acknowledge": N_("alert acknowledged"), "alert.close": N_("alert closed"),
    "kit.keypad": N_("keypad-only setting changed"), "kit.lock": N_("kit locked by staff"),
    "kit.protocol": N_("kit protocol changed"), "kit.provision": N_("kit registered"),
    "kit.repossess": N_("kit repossessed"), "kit.rotate_secret": N_("kit key renewed"),
    "kit.set_credit_until": N_("credit date set by staff"), "kit.swap": N_("kit swapped"),
    "kit.token": N_("keypad code issued"), "kit.unlock": N_("kit unlocked by staff"),
    "payment.callback_unconfirmed": N_("payment notice not confirmed by the provider"),
    "payment.credit": N_("held payment credited"), "payment.failed": N_("payment failed"),
    "payment.intent": N_("payment requested"), "payment.reversal": N_("payment reversed"),
    "payment.reversal_unknown": N_("reversal of an unknown payment"),
    "payment.reversal_void": N_("reversal of a held payment"),
    "payment.suspense": N_("payment held in suspense"),
    "reconcile.import": N_("statement imported"),
    "reconcile.approved": N_("statement match approved"),
    "reconcile.rejected": N_("statement match rejected"),
    "secret_key.rotate": N_("secret key renewed"),
    "suspense.propose": N_("held payment: link proposed"),
    "suspense.approved": N_("held payment: link approved"),
    "suspense.rejected": N_("held payment: link rejected"),
    "webhook.secret_rotated": N_("webhook secret renewed"),
  },
  timeline_kind: { payment: N_("Payment"), command_issued: N_("Command issued"),
                   command_applied: N_("Command applied"), audit: N_("Staff action"),
                   alert_opened: N_("Alert opened"), alert_closed: N_("Alert closed"),
                   telemetry_gap: N_("No telemetry") },
  load_pattern: { "evening-peak": N_("evening peak"), "night-long": N_("all night"),
                  daytime: N_("daytime"), spread: N_("spread over the day") },
  sizing: { ok: N_("well sized"), undersized: N_("undersized"), oversized: N_("oversized"),
            unknown: N_("unknown") },
};

// a code as the page words it; a code no table knows is shown as is
function label(kind, code) {
  const msgid = code == null ? null : CODES[kind][code];
  return msgid ? t(msgid) : code;
}

// The suspense reasons the payments code writes (control/payments/matching.py, reversals.py),
// English sentences with numbers: each pattern's groups fill its msgid's fields in order.
const REASONS = [
  [/^reference matches (\d+) accounts$/, N_("reference matches {n} accounts"), ["n"]],
  [/^no reference match; phone matches (\d+) accounts$/,
   N_("no reference match; phone matches {n} accounts"), ["n"]],
  [/^no account matches the reference or the phone$/,
   N_("no account matches the reference or the phone"), []],
  [/^no account matches$/, N_("no account matches"), []],
  [/^payment is not linked to an account$/, N_("payment is not linked to an account"), []],
  [/^amount (\d+) differs from the (\d+) requested( \(x100 error\?\))?$/,
   N_("amount {amount} differs from the {requested} requested"), ["amount", "requested", "x100"]],
  [/^the account is already paid in full$/, N_("the account is already paid in full"), []],
  [/^amount (\d+) exceeds the (\d+) still owed( \(x100 error\?\))?$/,
   N_("amount {amount} exceeds the {owed} still owed"), ["amount", "owed", "x100"]],
  [/^provider confirmed no usable amount \((.*)\)$/,
   N_("provider confirmed no usable amount ({amount})"), ["raw"]],
  [/^currency (\S+) is not (\S+)$/, N_("currency {currency} is not {expected}"),
   ["currency", "expected"]],
  [/^original was in suspense$/, N_("original was in suspense"), []],
  [/^reversal of a payment we do not know$/, N_("reversal of a payment we do not know"), []],
];

// a suspense reason in the page's language; one no pattern knows is shown as stored
function reasonText(reason) {
  for (const [pattern, msgid, names] of REASONS) {
    const m = reason == null ? null : reason.match(pattern);
    if (!m) continue;
    const params = {};
    names.forEach((name, i) => { params[name] = m[i + 1]; });
    for (const name of ["amount", "requested", "owed"]) {
      if (params[name] != null) params[name] = fcfa(params[name]);
    }
    if (params.raw != null) params.amount = params.raw;
    return t(msgid, params) + (params.x100 ? " " + t("(x100 error?)") : "");
  }
  return reason;
}

// an alert's description in the page's language, from its kind and evidence (the numbers);
// the stored English sentence when the evidence lacks them
function alertText(a) {
  const e = a.evidence || {};
  const has = (name) => typeof e[name] === "number";
  switch (a.kind) {
    case "power_while_locked":
      if (has("hours")) return t("power drawn while locked in {hours} hours", { hours: num(e.hours, 0) });
      break;
    case "capacity_fading":
      if (has("fade_per_year") && has("expected_fade_per_year")) {
        return t("capacity fading {fade} %/year (expected about {expected} %)",
                 { fade: num(100 * e.fade_per_year, 0),
                   expected: num(100 * e.expected_fade_per_year, 0) });
      }
      break;
    case "pv_below_neighbours":
      if (has("ratio")) {
        return t("PV at {share} % of neighbours' in {region}",
                 { share: num(100 * e.ratio, 0), region: e.region ?? "–" });
      }
      break;
    case "silent":
      if (has("silent_days")) return t("no report for {days} days", { days: num(e.silent_days, 1) });
      if ("silent_days" in e) return t("no report since the kit was registered");
      break;
  }
  return a.detail;
}

// FCFA amounts are grouped the French way in either language: "12 500 FCFA"
const fcfa = (n) => n == null ? "–" : new Intl.NumberFormat("fr-FR").format(Number(n)) + " FCFA";
// moments in Lomé's time (UTC+0 all year), the zone shown
const when = (u) => u == null ? "—" : new Intl.DateTimeFormat(locale === "fr" ? "fr-FR" : "en-GB", {
  timeZone: "Africa/Lome", year: "numeric", month: "2-digit", day: "2-digit",
  hour: "2-digit", minute: "2-digit", timeZoneName: "short",
}).format(new Date(u * 1000));

// the API's error body: its message in the page's language, else its detail
function problem(status, data) {
  const said = data.message ?? (typeof data.detail === "string" ? data.detail
                                                                : JSON.stringify(data.detail ?? data));
  return t("Error {status}: {message}", { status, message: said }) + (data.code ? ` [${data.code}]` : "");
}

// headers for the API: the key, and the page's language for its error messages
function apiHeaders(key) {
  return { Authorization: "Bearer " + key, "Accept-Language": locale };
}

async function loadTexts() {
  const chosen = localStorage.getItem(LANG_KEY);
  const resp = await fetch("/i18n/dashboard" + (chosen ? "?lang=" + encodeURIComponent(chosen) : ""));
  const data = await resp.json();
  locale = data.locale;
  messages = data.messages;
  document.documentElement.lang = locale;
  document.getElementById("lang").value = locale;
  for (const el of document.querySelectorAll("[data-i18n]")) el.textContent = t(el.dataset.i18n);
  for (const el of document.querySelectorAll("[data-i18n-placeholder]")) {
    el.placeholder = t(el.dataset.i18nPlaceholder);
  }
}

// the FR/EN switch: remembered in the browser, then the page reloads its texts and data
function onLanguageSwitch(reload) {
  document.getElementById("lang").addEventListener("change", (ev) => {
    localStorage.setItem(LANG_KEY, ev.target.value);
    loadTexts().then(reload);
  });
}
