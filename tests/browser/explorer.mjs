// The Program Explorer in real headless Chromium (Debian's /usr/bin/chromium, driven by playwright-core).
// Usage: node explorer.mjs NODE_URL [--screenshot PATH]
// Loads the page (and checks its first load is at most 200 KB), chooses gcc, edits the C file, runs it with
// Ctrl-Enter and sees the program's output; runs it again and sees a cache hit; chooses dot and sees the
// rendered SVG, then a PNG; opens the permalink in a fresh page and sees the same inputs, options and image.
// Prints one JSON line {"ok": true, ...} and exits 0, or says what failed and exits 1.
import { chromium } from 'playwright-core';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const FIRST_LOAD_BYTES_MAX = 200 * 1024;
const RUN_TIMEOUT_MS = 90_000;

const args = process.argv.slice(2);
const base = args[0];
const shotAt = args.indexOf('--screenshot');
const screenshot = shotAt >= 0 ? args[shotAt + 1] : null;
if (!base) {
  console.error('usage: node explorer.mjs NODE_URL [--screenshot PATH]');
  process.exit(2);
}

// Unique per run, so that its first run is a cache miss even against a node that ran this test before.
const C_PROGRAM = `// ${new Date().toISOString()}
#include <stdio.h>
int main(void) {
    int sum = 0;
    for (int i = 1; i <= 100; i++) sum += i;
    printf("sum is %d\\n", sum);
    return 0;
}
`;
const DOT_GRAPH = 'digraph g { rankdir=LR; editor -> shoal -> microvm -> record; }\n';

const profile = mkdtempSync(join(tmpdir(), 'shoal-chromium-'));
const context = await chromium.launchPersistentContext(profile, {
  executablePath: '/usr/bin/chromium',
  headless: true,
  viewport: { width: 1280, height: 860 },
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
const errors = [];
let step = 'start';
const facts = {};

function check(cond, what) {
  if (!cond) throw new Error(`${step}: ${what}`);
}

// Waits for the output image named `suffix`; a failed run ends the wait with its stderr.
async function imageLoaded(page, suffix) {
  const outcome = await page.waitForFunction((sfx) => {
    const img = [...document.querySelectorAll('#files img')].find((i) => i.src.endsWith(sfx));
    if (img && img.complete && img.naturalWidth > 0) return 'ok';
    const exit = document.querySelector('#exit');
    if (exit && exit.classList.contains('fail')) return `the run failed: ${exit.textContent}: ${document.querySelector('#stderr').textContent}`;
    return false;
  }, suffix, { timeout: RUN_TIMEOUT_MS });
  const v = await outcome.jsonValue();
  check(v === 'ok', v);
}

const text = (page, sel) => page.$eval(sel, (e) => e.textContent);

try {
  const page = context.pages()[0] || await context.newPage();
  page.on('pageerror', (e) => errors.push(`page error: ${e.message}`));
  // The one refused request (bad options) logs a 400; anything else logged as an error fails the test.
  page.on('console', (m) => {
    if (m.type() === 'error' && !/status of 400/.test(m.text())) errors.push(`console: ${m.text()}`);
  });
  let firstLoadBytes = 0;
  const count = async (req) => {
    const s = await req.sizes().catch(() => null);
    if (s) firstLoadBytes += s.responseBodySize + s.responseHeadersSize;
  };
  page.on('requestfinished', count);

  step = 'load the page';
  const t0 = Date.now();
  await page.goto(`${base}/`, { waitUntil: 'networkidle' });
  await page.waitForSelector('#entry option[value=gcc]', { state: 'attached' });
  facts.first_load_ms = Date.now() - t0;
  page.off('requestfinished', count);
  facts.first_load_bytes = firstLoadBytes;
  check(firstLoadBytes > 0 && firstLoadBytes <= FIRST_LOAD_BYTES_MAX, `first load was ${firstLoadBytes} bytes`);

  step = 'choose gcc, edit the C file, run with Ctrl-Enter';
  await page.selectOption('#entry', 'gcc');
  check((await page.inputValue('#entry')) === 'gcc', 'gcc is chosen');
  check((await text(page, '#filetype')) === 'text/x-c', 'the open file is C');
  await page.fill('#code', C_PROGRAM);
  await page.focus('#code');
  await page.keyboard.press('Control+Enter');
  await page.waitForFunction(() => document.querySelector('#stdout').textContent.includes('sum is 5050'), null,
    { timeout: RUN_TIMEOUT_MS });
  check((await text(page, '#exit')).startsWith('ok'), 'exit ok');
  check((await text(page, '#cached')).startsWith('miss'), 'the first run is a cache miss');

  step = 'run it again: the cache answers';
  await page.click('#run');
  await page.waitForFunction(() => document.querySelector('#cached').textContent.startsWith('hit'), null,
    { timeout: RUN_TIMEOUT_MS });
  check((await text(page, '#stdout')).includes('sum is 5050'), 'same output from the cache');

  step = 'choose dot, see the rendered SVG';
  await page.selectOption('#entry', 'dot');
  check((await text(page, '#filetype')) === 'text/vnd.graphviz', 'choosing dot opened a graph file');
  await page.fill('#code', DOT_GRAPH);
  await page.click('#run');
  await imageLoaded(page, '/graph.svg');

  step = 'PNG out';
  await page.selectOption('#opt-format', 'png');
  await page.fill('#opt-dpi', '72');
  await page.click('#run');
  await imageLoaded(page, '/graph.png');
  const pngWidth = await page.$eval('#files img', (i) => i.naturalWidth);
  check(pngWidth > 50, `the PNG is ${pngWidth} px wide`);
  if (screenshot) {
    await page.screenshot({ path: screenshot, fullPage: false });
    facts.screenshot = screenshot;
  }

  step = 'bad options are named beside their field';
  await page.fill('#opt-dpi', '5000');
  await page.click('#run');
  await page.waitForFunction(() => document.querySelector('#opt-dpi-problem').textContent.includes('outside'), null,
    { timeout: RUN_TIMEOUT_MS });
  check(!(await page.isHidden('#banner')), 'the banner says what is wrong');
  await page.fill('#opt-dpi', '72');

  step = 'open the permalink: the same inputs, options and result';
  const permalink = await page.getAttribute('#permalink', 'href');
  check(/^\/r\/[0-9a-f]{64}$/.test(permalink), `permalink ${permalink}`);
  const again = await context.newPage();
  again.on('pageerror', (e) => errors.push(`page error (permalink): ${e.message}`));
  await again.goto(`${base}${permalink}`, { waitUntil: 'networkidle' });
  await imageLoaded(again, '/graph.png');
  check((await again.inputValue('#entry')) === 'dot', 'the permalink chose dot');
  check((await again.inputValue('#opt-format')) === 'png', 'the permalink kept the format');
  check((await again.inputValue('#opt-dpi')) === '72', 'the permalink kept the dpi');
  check((await again.inputValue('#code')) === DOT_GRAPH, 'the permalink reloaded the graph file');
  const tabs = await again.$$eval('[role=tab]', (t) => t.map((x) => x.textContent));
  check(tabs.includes('main.c') && tabs.includes('graph.dot'), `the permalink has both files: ${tabs}`);
  check((await text(again, '#cached')).startsWith('from the record'), 'the permalink shows the record');

  check(errors.length === 0, errors.join('; '));
  console.log(JSON.stringify({ ok: true, ...facts }));
} catch (e) {
  console.error(`FAILED at "${step}": ${e.message}`);
  for (const x of errors) console.error(x);
  process.exitCode = 1;
} finally {
  await context.close();
  rmSync(profile, { recursive: true, force: true });
}
