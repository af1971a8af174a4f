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
