// What every page shares: its header (the links between the pages, the key form, the FR/EN
// switch), the stored key, calls to the /v1 API (errors as the API words them, in the
// page's language) and table cells that never take HTML.
"use strict";
const KEY = "cizo_api_key";
const $ = (id) => document.getElementById(id);

// The header under the page's own <h1>: a page says only where it is. Drawn as this file
// loads, so it is there before the page's script binds the key form and i18n.js
// translates its texts. Constant markup: nothing from the API goes in.
function drawHeader() {
  const header = document.querySelector("body > header");
  header.insertAdjacentHTML("beforeend", `
  <nav class="pages"><a href="/" data-i18n="Kits">Kits</a> <a href="/dashboard" data-i18n="Dashboard">Dashboard</a> <a href="/finance" data-i18n="Finance">Finance</a> <a href="/regulator" data-i18n="National view">National view</a></nav>
  <form id="keyform">
    <input id="apikey" type="password" autocomplete="off" placeholder="API key (cizo_...)" data-i18n-placeholder="API key (cizo_...)">
    <button type="submit" data-i18n="Use key">Use key</button>
    <button type="button" id="forget" data-i18n="Forget key">Forget key</button>
    <span id="who" class="muted"></span>
    <select id="lang" aria-label="Language / Langue">
      <option value="fr">FR</option><option value="en">EN</option>
    </select>
  </form>`);
  for (const a of header.querySelectorAll("nav.pages a")) {
    if (a.getAttribute("href") === location.pathname) a.setAttribute("aria-current", "page");
  }
}
drawHeader();

function cell(tr, text, cls) {
  const td = document.createElement("td");
  td.textContent = text == null ? "—" : String(text); // never innerHTML: data from the API
  if (cls) td.className = cls;
  tr.appendChild(td);
  return td;
}

// a cell showing a code of the API as the page words it (i18n.js label()); the code itself
// stays in the cell's title, for staff who read the logs
function codeCell(tr, kind, code, cls) {
  const td = cell(tr, label(kind, code), cls);
  if (code != null) { td.title = code; td.dataset.code = code; }
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

// who the key is (GET /v1/dashboard/me), shown in the header; the page reads its role here
async function whoAmI() {
  const me = await api("/v1/dashboard/me");
  $("who").textContent = `${me.name} (${me.role}${me.desco_id ? ", " + me.desco_id : ""})`;
  return me;
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
