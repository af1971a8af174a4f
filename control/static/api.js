// What the dashboard pages share: the API key kept in the browser, calls to the /v1 API
// with it, and the key form; errors shown in the page's #msg in the page's language.
"use strict";
const KEY = "cizo_api_key";
const $ = (id) => document.getElementById(id);

async function api(path, opts) {
  const key = localStorage.getItem(KEY);
  if (!key) throw new Error(t("Type an API key."));
  const headers = Object.assign(apiHeaders(key), (opts && opts.headers) || {});
  const resp = await fetch(path, Object.assign({}, opts || {}, { headers }));
  const data = await resp.json().catch(() => ({}));
  if (!resp.ok) throw new Error(problem(resp.status, data));
  return data;
}

async function act(fn) {
  $("msg").textContent = "";
  try { await fn(); } catch (err) { $("msg").textContent = String(err.message || err); }
}

// the key form: keep the key typed, then load the page again with it
function keyForm(load) {
  $("keyform").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const v = $("apikey").value.trim();
    if (v) localStorage.setItem(KEY, v);
    $("apikey").value = "";
    act(load);
  });
  $("forget").addEventListener("click", () => { localStorage.removeItem(KEY); location.reload(); });
}
