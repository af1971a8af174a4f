// What the dashboard and finance pages share: the stored key, calls to the /v1 API (errors
// as the API words them, in the page's language) and table cells that never take HTML.
"use strict";
const KEY = "cizo_api_key";
const $ = (id) => document.getElementById(id);

function cell(tr, text, cls) {
  const td = document.createElement("td");
  td.textContent = text == null ? "—" : String(text); // never innerHTML: data from the API
  if (cls) td.className = cls;
  tr.appendChild(td);
  return td;
}

async function api(path, opts) {
  const key = localStorage.getItem(KEY);
  if (!key) throw new Error(t("Type an API key."));
  const headers = Object.assign(apiHeaders(key), (opts && opts.headers) || {});
  const resp = await fetch(path, Object.assign({}, opts || {}, { headers }));
  const data = await resp.json().catch(() => ({}));
  if (!resp.ok) throw new Error(problem(resp.status, data));
  return data;
}

// a POST with a JSON body
const post = (path, body) => api(path, { method: "POST", headers: { "Content-Type": "application/json" },
                                          body: JSON.stringify(body || {}) });

// runs one action of the page; its failure (the API's message) is shown in #msg
async function act(fn) {
  $("msg").textContent = "";
  try { await fn(); } catch (err) { $("msg").textContent = String(err.message || err); }
}

// the key form and the "forget" button, then a reload of the page's data
function onKeyForm(reload) {
  $("keyform").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const v = $("apikey").value.trim();
    if (v) localStorage.setItem(KEY, v);
    $("apikey").value = "";
    act(reload);
  });
  $("forget").addEventListener("click", () => { localStorage.removeItem(KEY); location.reload(); });
}
