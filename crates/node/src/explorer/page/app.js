// The Program Explorer page: plain JS, no build step. It talks to /v1/explorer/* only, from its own
// origin (the node refuses requests whose Origin is another site's).
'use strict';

const $ = (id) => document.getElementById(id);
const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;

const state = {
  cat: null,        // the catalogue (GET /v1/explorer/catalogue)
  files: [],        // [{name, text}]
  open: 0,          // index of the open file
  shown: -1,        // index of the file whose text the editor holds (-1: none)
  entry: null,      // the chosen catalogue entry
  running: false,
};

// A node that needs a token for its explorer (one not started with --explorer-public, off
// loopback or with --http-auth) answers 401: the page asks for a token once and keeps it for this
// tab only (sessionStorage), sending it as a bearer token with every call.
const TOKEN_KEY = 'shoal-token';

async function api(url, opts = {}, asked = false) {
  const token = sessionStorage.getItem(TOKEN_KEY);
  const headers = Object.assign({}, opts.headers || {}, token ? { Authorization: `Bearer ${token}` } : {});
  const r = await fetch(url, Object.assign({}, opts, { headers }));
  if (r.status === 401 && !asked) {
    const given = window.prompt('This node needs an API token (its operator makes one with `shoal token create --scope submit`):');
    if (given && given.trim()) {
      sessionStorage.setItem(TOKEN_KEY, given.trim());
      return api(url, opts, true);
    }
  }
  return r;
}

// An output image: its URL, or with a token (an <img> cannot send one) the bytes fetched with it.
function imageOf(f) {
  const img = el('img', { alt: f.name });
  if (!sessionStorage.getItem(TOKEN_KEY)) img.src = f.url;
  else api(f.url).then((r) => r.blob()).then((b) => { img.src = URL.createObjectURL(b); }).catch(() => {});
  return img;
}

// `kept until` of a run view: its permalink works at least until then.
function keptText(ms) {
  if (ms === null || ms === undefined) return null;
  if (ms >= 8.64e15) return 'for good';
  return `until ${new Date(ms).toISOString().slice(0, 16).replace('T', ' ')} UTC (at least)`;
}

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === false || v === null || v === undefined) continue;
    if (k === 'text') e.textContent = v;
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children) e.append(c);
  return e;
}

function humanBytes(n) {
  const units = ['B', 'KiB', 'MiB', 'GiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return i === 0 ? `${n} B` : `${n.toFixed(1)} ${units[i]}`;
}

function mediaTypeOf(name) {
  const ext = name.includes('.') ? name.split('.').pop().toLowerCase() : '';
  for (const [type, exts] of Object.entries(state.cat.types)) {
    if (exts.includes(ext)) return type;
  }
  return 'text/plain';
}

function setStatus(text) { $('status').textContent = text; }

function showBanner(text) {
  const b = $('banner');
  b.textContent = text;
  b.hidden = !text;
}

// ---- files -----------------------------------------------------------------------------------

function saveEditor() {
  if (state.files[state.shown]) state.files[state.shown].text = $('code').value;
}

function openFile(i) {
  saveEditor();
  state.open = Math.max(0, Math.min(i, state.files.length - 1));
  renderTabs();
  const f = state.files[state.open];
  $('code').value = f ? f.text : '';
  $('code').disabled = !f;
  state.shown = f ? state.open : -1;
  $('filetype').textContent = f ? mediaTypeOf(f.name) : 'no file: add one';
  renderEntries();
}

function renderTabs() {
  const tabs = $('tabs');
  tabs.replaceChildren();
  state.files.forEach((f, i) => {
    tabs.append(el('button', {
      type: 'button', role: 'tab', 'aria-selected': String(i === state.open), tabindex: i === state.open ? '0' : '-1',
      text: f.name, onclick: () => openFile(i),
      onkeydown: (ev) => {
        if (ev.key === 'ArrowRight' || ev.key === 'ArrowLeft') {
          const j = (i + (ev.key === 'ArrowRight' ? 1 : -1) + state.files.length) % state.files.length;
          openFile(j);
          tabs.children[j].focus();
        }
      },
    }));
  });
}

function askName(message, current) {
  const name = window.prompt(message, current);
  if (name === null) return null;
  if (!NAME_RE.test(name)) {
    showBanner(`"${name}" is not a file name the sandbox takes: a letter or digit first, then letters, digits, . _ -`);
    return null;
  }
  if (state.files.some((f, i) => f.name === name && i !== state.open)) {
    showBanner(`there is a file named ${name} already`);
    return null;
  }
  return name;
}

function addFile(name, text) {
  saveEditor();
  state.files.push({ name, text });
  openFile(state.files.length - 1);
}

// ---- catalogue and options -------------------------------------------------------------------

function entryReads(entry, name) { return entry.inputs.includes(mediaTypeOf(name)); }

function renderEntries() {
  const sel = $('entry');
  const f = state.files[state.open];
  const fits = (e) => f && entryReads(e, f.name);
  const label = (e) => e.title + (e.available ? '' : ' (not built here)');
  sel.replaceChildren();
  const matching = state.cat.entries.filter(fits);
  const others = state.cat.entries.filter((e) => !fits(e));
  if (matching.length) {
    const g = el('optgroup', { label: `For ${f.name} (${mediaTypeOf(f.name)})` });
    for (const e of matching) g.append(el('option', { value: e.id, text: label(e) }));
    sel.append(g);
  }
  const g = el('optgroup', { label: matching.length ? 'Other images' : 'Images' });
  for (const e of others) g.append(el('option', { value: e.id, text: label(e) }));
  sel.append(g);
  if (state.entry) sel.value = state.entry.id;
}

// Chooses an image; when no open file is of a type it reads, its example files are added.
function chooseEntry(id, values) {
  const entry = state.cat.entries.find((e) => e.id === id);
  if (!entry) { showBanner(`the catalogue has no image ${id}`); return; }
  state.entry = entry;
  $('about').textContent = entry.description +
    (entry.available ? '' : ` Its image ${entry.image} is not in this node's store: run scripts/build-images.sh.`);
  renderOptions(entry, values || {});
  if (!values && !state.files.some((f) => entryReads(entry, f.name))) {
    saveEditor();
    let first = -1;
    for (const x of entry.examples) {
      if (state.files.some((f) => f.name === x.name)) continue;
      state.files.push({ name: x.name, text: x.text.replace(/^\n/, '') });
      if (first < 0) first = state.files.length - 1;
    }
    if (first >= 0) { openFile(first); return; }
  }
  if (!values) {
    const i = state.files.findIndex((f) => entryReads(entry, f.name));
    if (i >= 0 && !entryReads(entry, (state.files[state.open] || { name: '' }).name)) { openFile(i); return; }
  }
  renderEntries();
}

function renderOptions(entry, values) {
  const form = $('options');
  form.replaceChildren();
  for (const o of entry.options) {
    const id = `opt-${o.name}`;
    const v = o.name in values ? values[o.name] : o.default;
    let input;
    if (o.type === 'choice') {
      input = el('select', { id, name: o.name });
      for (const c of o.choices) input.append(el('option', { value: c.value, text: c.label }));
      input.value = v;
    } else if (o.type === 'integer') {
      input = el('input', { id, name: o.name, type: 'number', min: o.min, max: o.max, step: 1, value: v });
    } else if (o.type === 'boolean') {
      input = el('input', { id, name: o.name, type: 'checkbox' });
      input.checked = !!v;
    } else {
      input = el('input', { id, name: o.name, type: 'text', maxlength: o.max_len, value: v });
    }
    const help = o.help || (o.type === 'integer' ? `${o.min} to ${o.max}` : '');
    const field = o.type === 'boolean'
      ? el('div', { class: 'field check' }, input, el('label', { for: id, text: o.label }))
      : el('div', { class: 'field' }, el('label', { for: id, text: o.label }), input);
    if (help) field.append(el('small', { text: help }));
    field.append(el('small', { class: 'problem', id: `${id}-problem`, 'aria-live': 'polite' }));
    form.append(field);
  }
}

function readOptions() {
  const out = {};
  for (const o of state.entry.options) {
    const input = $(`opt-${o.name}`);
    if (o.type === 'boolean') out[o.name] = input.checked;
    else if (o.type === 'integer') out[o.name] = /^-?\d+$/.test(input.value) ? Number(input.value) : input.value;
    else out[o.name] = input.value;
  }
  return out;
}

function clearProblems() {
  for (const p of document.querySelectorAll('.field .problem')) p.textContent = '';
  for (const i of document.querySelectorAll('[aria-invalid]')) i.removeAttribute('aria-invalid');
}

function showProblems(problems) {
  for (const p of problems || []) {
    const input = $(`opt-${p.option}`);
    if (!input) continue;
    input.setAttribute('aria-invalid', 'true');
    $(`opt-${p.option}-problem`).textContent = p.message;
  }
}

// ---- running ---------------------------------------------------------------------------------

function mainFile() {
  const f = state.files[state.open];
  if (f && entryReads(state.entry, f.name)) return f.name;
  const m = state.files.find((x) => entryReads(state.entry, x.name));
  return m ? m.name : (state.files[0] || {}).name;
}

// Checks the catalogue's limits before sending, so an oversize request is refused with words.
function checkLimits(stdin) {
  const l = state.cat.limits;
  const enc = new TextEncoder();
  if (state.files.length > l.files_max) return `too many files: at most ${l.files_max} per run`;
  let total = 0;
  for (const f of state.files) {
    const n = enc.encode(f.text).length;
    total += n;
    if (n > l.file_bytes_max) return `${f.name} is ${humanBytes(n)}; one file may be at most ${humanBytes(l.file_bytes_max)}`;
  }
  const s = enc.encode(stdin).length;
  if (s > l.stdin_bytes_max) return `stdin is ${humanBytes(s)}; at most ${humanBytes(l.stdin_bytes_max)}`;
  if (total + s > l.request_bytes_max) return `the files add up to ${humanBytes(total + s)}; at most ${humanBytes(l.request_bytes_max)}`;
  return null;
}

async function run() {
  if (state.running || !state.entry) return;
  saveEditor();
  showBanner('');
  clearProblems();
  const stdin = $('stdin').value;
  const over = checkLimits(stdin);
  if (over) { showBanner(over); return; }
  const form = new FormData();
  const request = { entry: state.entry.id, options: readOptions(), main: mainFile() || null };
  form.append('request', new Blob([JSON.stringify(request)], { type: 'application/json' }));
  for (const f of state.files) form.append('file', new Blob([f.text], { type: 'text/plain' }), f.name);
  if (stdin) form.append('stdin', new Blob([stdin]));
  state.running = true;
  $('run').disabled = true;
  setStatus(`running ${state.entry.title}…`);
  const t0 = performance.now();
  try {
    const r = await api('/v1/explorer/runs', { method: 'POST', body: form });
    const body = await r.json().catch(() => ({ error: `HTTP ${r.status} ${r.statusText}` }));
    if (!r.ok) {
      const wait = r.headers.get('Retry-After');
      showBanner((body.error || `HTTP ${r.status}`) + (wait ? ` (try again in ${wait} s)` : ''));
      showProblems(body.problems);
      setStatus('not run');
      return;
    }
    showResult(body, performance.now() - t0);
    history.replaceState(null, '', body.permalink);
  } catch (e) {
    showBanner(`the node did not answer: ${e.message}`);
    setStatus('');
  } finally {
    state.running = false;
    $('run').disabled = false;
  }
}

function download(f, label) {
  return el('a', { href: `${f.url}?download=1`, download: f.name.split('/').pop(), text: label || 'download' });
}

function showStream(id, f) {
  const pre = $(id);
  pre.replaceChildren();
  if (f.text !== undefined) pre.textContent = f.text;
  else pre.append(`(${humanBytes(f.size)}, not shown) `, download(f));
}

function showResult(v, roundTripMs) {
  $('result').hidden = false;
  const dl = $('summary');
  dl.replaceChildren();
  const row = (k, ...v2) => dl.append(el('dt', { text: k }), el('dd', {}, ...v2));
  row('Exit', el('span', { class: v.ok ? 'ok' : 'fail', id: 'exit', text: v.ok ? 'ok (0)' : v.message }));
  const timing = `${v.wall_ms} ms run` + (roundTripMs !== undefined ? ` · ${Math.round(roundTripMs)} ms answer` : '');
  row('Time', el('span', { id: 'time', text: timing }));
  const cache = v.cached === undefined ? 'from the record (permalink)'
    : v.cached ? 'hit: answered from the action cache' : 'miss: ran now';
  row('Cache', el('span', { id: 'cached', text: cache }));
  row('Ran on', `${v.backend}${v.accelerator ? ` (${v.accelerator})` : ''}, peak memory ${humanBytes(v.peak_memory_bytes)}`);
  row('Record', el('a', { id: 'permalink', href: v.permalink, title: 'permalink: names the run record', text: `${v.permalink.slice(0, 19)}…` }), ' · ',
    el('a', { href: v.record_url, text: 'JSON' }));
  const kept = keptText(v.kept_until_unix_ms);
  if (kept) row('Kept', el('span', { id: 'kept', text: kept, title: 'the record and its files are kept at least this long, so the permalink works' }));
  showStream('stdout', v.stdout);
  showStream('stderr', v.stderr);
  const files = $('files');
  files.replaceChildren();
  if (!v.files.length) files.append(el('p', { text: 'none (a run returns what it writes under /output)' }));
  for (const f of v.files) {
    const caption = el('figcaption', {}, `${f.name} · ${humanBytes(f.size)} · `, download(f));
    if (f.media_type.startsWith('image/')) {
      files.append(el('figure', {}, imageOf(f), caption));
    } else if (f.text !== undefined) {
      files.append(el('figure', {}, caption, el('pre', { text: f.text })));
    } else {
      files.append(el('figure', {}, caption));
    }
  }
  if (v.files_not_listed) files.append(el('p', { text: `and ${v.files_not_listed} more files` }));
  setStatus(v.ok ? 'done' : 'failed');
}

// ---- permalinks ------------------------------------------------------------------------------

async function textOf(f) {
  if (f.text !== undefined) return f.text;
  const r = await api(f.url);
  return r.text();
}

async function loadPermalink(hash) {
  setStatus('loading the run…');
  const r = await api(`/v1/explorer/runs/${hash}`);
  const v = await r.json().catch(() => ({ error: `HTTP ${r.status}` }));
  if (!r.ok) { showBanner(v.error); setStatus(''); return false; }
  state.files = await Promise.all(v.inputs.map(async (f) => ({ name: f.name, text: await textOf(f) })));
  $('stdin').value = v.stdin ? await textOf(v.stdin) : '';
  if (v.stdin) $('stdin-box').open = true;
  const main = state.files.findIndex((f) => f.name === v.main);
  state.open = Math.max(0, main);
  state.shown = -1;
  if (v.entry && state.cat.entries.some((e) => e.id === v.entry)) chooseEntry(v.entry, v.options);
  else showBanner('this run did not come from the explorer, or its image left the catalogue: results only');
  openFile(state.open);
  showResult(v);
  return true;
}

// ---- start -----------------------------------------------------------------------------------

async function boot() {
  const r = await api('/v1/explorer/catalogue');
  state.cat = await r.json();
  if (!r.ok) { showBanner(state.cat.error); return; }
  if (!state.cat.entries.length) { showBanner('the catalogue is empty'); return; }
  $('entry').addEventListener('change', (ev) => chooseEntry(ev.target.value));
  $('run').addEventListener('click', run);
  $('add').addEventListener('click', () => {
    const name = askName('New file name', 'file.txt');
    if (name) addFile(name, '');
  });
  $('rename').addEventListener('click', () => {
    const f = state.files[state.open];
    if (!f) return;
    const name = askName('Rename to', f.name);
    if (name) { f.name = name; openFile(state.open); }
  });
  $('delete').addEventListener('click', () => {
    if (!state.files.length) return;
    saveEditor();
    state.files.splice(state.open, 1);
    state.shown = -1;
    openFile(state.open);
  });
  document.addEventListener('keydown', (ev) => {
    if ((ev.ctrlKey || ev.metaKey) && ev.key === 'Enter') { ev.preventDefault(); run(); }
    if (ev.altKey && (ev.key === 'n' || ev.key === 'N')) { ev.preventDefault(); $('add').click(); }
  });
  const m = location.pathname.match(/^\/r\/((?:blake3:)?[0-9a-f]{64})$/);
  if (m && await loadPermalink(m[1])) return;
  chooseEntry(state.cat.entries[0].id);
  openFile(state.open);
  setStatus(`${state.cat.entries.length} images · runs in a ${state.cat.backend === 'microvm' ? 'microVM' : 'namespace sandbox'}`);
}

boot().catch((e) => showBanner(`the page did not start: ${e.message}`));
