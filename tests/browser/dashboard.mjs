// The dashboard in a real Chromium, against two api replicas: started by tests/tests/dashboard.rs,
// which passes the replicas' URLs and the admin's credentials in the environment:
//   PREXOR_API_A, PREXOR_API_B   http://127.0.0.1:<port> of two api replicas
//   PREXOR_REPLICAS              their replica ids, comma-separated (as the overview lists them)
//   PREXOR_USER, PREXOR_PASSWORD the admin
//   PREXOR_TOKEN, PREXOR_GROUP   a REST session and a group (JSON) to create with it on B
//   PREXOR_FORM_SPEC             a spec (JSON) of fake servers to type into the group form
//   PREXOR_VIEWER                user:password of a user with the viewer role
//   PREXOR_SHOTS                 where screenshots go
// Prints one JSON line {passed: [...], failed: [{name, error}]}; exits 1 if any check failed.

import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { ensure, launch, run } from './browser.mjs';
import { accessChecks } from './access.mjs';
import { adminChecks } from './admin.mjs';
import { nodeChecks } from './nodes.mjs';
import { operateChecks } from './operate.mjs';
import { templateChecks } from './templates.mjs';

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
};
const A = env('PREXOR_API_A');
const B = env('PREXOR_API_B');
const REPLICAS = env('PREXOR_REPLICAS').split(',');
const USER = env('PREXOR_USER');
const PASSWORD = env('PREXOR_PASSWORD');
const SHOTS = env('PREXOR_SHOTS');
mkdirSync(SHOTS, { recursive: true });

const browser = await launch();
const { context } = browser;
const page = await context.newPage();
// Anything the Content-Security-Policy blocks (an inline script or style) is a console error;
// refused requests (a wrong password's 401) are expected.
const problems = [];
page.on('console', (m) => m.type() === 'error' && !m.text().startsWith('Failed to load resource')
  && problems.push(m.text()));
page.on('pageerror', (e) => problems.push(String(e)));

const shot = (name) => page.screenshot({ path: join(SHOTS, `${name}.png`), fullPage: true });
const path = () => new URL(page.url()).pathname;
const sessionCookie = async (origin) =>
  (await context.cookies(`${origin}/ui/`)).find((c) => c.name === 'prexor_session');
const noForward = { maxRedirects: 0, failOnStatusCode: false };

/// Polls `probe` (a promise of a boolean) until it holds, at most `ms`.
async function eventually(what, probe, ms = 10_000) {
  const deadline = Date.now() + ms;
  while (!(await probe())) {
    if (Date.now() > deadline) throw new Error(`not within ${ms} ms: ${what}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

const checks = [
  ['sign in; the session cookie is not readable from page script', async () => {
    await page.goto(`${A}/ui/`);
    ensure(path() === '/ui/login', `not sent to sign in: ${page.url()}`);
    await page.fill('input[name=username]', USER);
    await page.fill('input[name=password]', 'not the password');
    await page.click('button[type=submit]');
    const refusal = await page.textContent('#sign-in-error');
    ensure(/invalid user name or password/.test(refusal), `a wrong password shows: ${refusal}`);
    await shot('sign-in-refused');
    await page.fill('input[name=password]', PASSWORD);
    await page.click('button[type=submit]');
    await page.waitForURL(`${A}/ui/`);
    ensure((await page.textContent('#signed-in-user')).trim() === USER, 'the user is not shown');
    const cookie = await sessionCookie(A);
    ensure(cookie, 'no session cookie');
    ensure(cookie.httpOnly && cookie.sameSite === 'Strict' && cookie.path === '/ui',
      `cookie flags: ${JSON.stringify({ ...cookie, value: '…' })}`);
    const visible = await page.evaluate(() => document.cookie);
    ensure(!visible.includes('prexor_session') && !visible.includes(cookie.value),
      `page script reads the cookie: ${visible}`);
    // The JSON API takes only a Bearer token, never the cookie.
    const me = await context.request.get(`${A}/api/v1/auth/me`,
      { headers: { Cookie: `prexor_session=${cookie.value}` }, failOnStatusCode: false });
    ensure(me.status() === 401, `the cookie authenticates /api/v1: ${me.status()}`);
    const response = await page.goto(`${A}/ui/`);
    const headers = response.headers();
    const csp = headers['content-security-policy'] || '';
    for (const rule of ["default-src 'self'", "script-src 'self'", "style-src 'self'",
      "frame-ancestors 'none'", "base-uri 'none'", "form-action 'self'"]) {
      ensure(csp.includes(rule), `CSP lacks ${rule}: ${csp}`);
    }
    ensure(headers['x-content-type-options'] === 'nosniff', 'no nosniff');
    ensure(headers['referrer-policy'] === 'same-origin', 'no Referrer-Policy');
    const css = await page.$eval('link[rel=stylesheet]', (l) => l.href);
    const asset = await context.request.get(css);
    ensure(asset.headers()['cache-control'] === 'public, max-age=31536000, immutable',
      `asset caching: ${asset.headers()['cache-control']}`);
  }],

  ['the overview lists both api replicas and follows events live', async () => {
    await page.waitForFunction((ids) => ids.every((id) =>
      document.querySelector(`tr.replica[data-kind="api"][data-replica="${id}"]`)),
    REPLICAS, { timeout: 30_000 });
    // A group created through replica B's REST API appears in the feed this page follows on A.
    const created = await fetch(`${B}/api/v1/groups`, {
      method: 'POST',
      headers: { Authorization: `Bearer ${env('PREXOR_TOKEN')}`, 'Content-Type': 'application/json' },
      body: env('PREXOR_GROUP'),
    });
    ensure(created.status === 201, `creating the group: ${created.status} ${await created.text()}`);
    const group = JSON.parse(env('PREXOR_GROUP')).name;
    await page.waitForFunction((name) => [...document.querySelectorAll(
      '#event-feed li.event[data-type="GROUP_CREATED"]')].some((li) => li.textContent.includes(name)),
    group);
    await page.waitForFunction(() => document.querySelector('#count-groups .value')?.textContent === '1',
      null, { timeout: 15_000 });
    ensure(problems.length === 0, `the page logged errors: ${problems.join(' | ')}`);
    await shot('overview');
  }],

  ['a POST without the CSRF token or from another origin is refused', async () => {
    const csrf = await page.getAttribute('input[name=csrf]', 'value');
    ensure(csrf, 'the page has no CSRF token');
    const logout = (options) => context.request.post(`${A}/ui/logout`, { ...noForward, ...options });
    let r = await logout({ headers: { Origin: A }, form: {} });
    ensure(r.status() === 403 && /no CSRF token/.test(await r.text()), `without a token: ${r.status()}`);
    r = await logout({ headers: { Origin: A }, form: { csrf: 'AAAAAAAA' } });
    ensure(r.status() === 403 && /does not belong/.test(await r.text()), `a wrong token: ${r.status()}`);
    r = await logout({ headers: { Origin: 'http://evil.example', 'X-CSRF-Token': csrf } });
    ensure(r.status() === 403 && /cross-origin/.test(await r.text()), `another host: ${r.status()}`);
    // In the browser: a page on another port of the same host is the same site, so the
    // SameSite=Strict cookie goes along; the origin check refuses it, even with the token.
    await page.route(`${B}/forged`, (route) => route.fulfill({
      contentType: 'text/html',
      body: `<form method="post" action="${A}/ui/logout"><input name="csrf" value="${csrf}"></form>` +
        '<script>document.forms[0].submit()</script>',
    }));
    const [forged] = await Promise.all([
      page.waitForResponse(`${A}/ui/logout`),
      page.goto(`${B}/forged`),
    ]);
    ensure(forged.status() === 403, `the forged form got ${forged.status()}`);
    await page.waitForSelector('.error');
    ensure(/cross-origin request refused/.test(await page.textContent('.error')), 'no reason shown');
    await shot('forged-post-refused');
    await page.goto(`${A}/ui/`);
    ensure(path() === '/ui/', 'the refused POSTs signed the user out');
  }],

  ...operateChecks({ page, A, B, env, shot, eventually, problems }),

  ...nodeChecks({ page, A, env, shot, eventually, problems }),

  ['the overview charts players and live instances over time', async () => {
    // The replicas sample every second here (api.historyEvery); the summary reloads every 5 s.
    await page.goto(`${A}/ui/`);
    const legend = (chart, series) => `#${chart} .legend[data-series="${series}"]`;
    const latest = async (chart, series) => {
      const at = await page.$(legend(chart, series));
      return at && { points: Number(await at.getAttribute('data-points')),
        value: Number(await at.getAttribute('data-latest')) };
    };
    const live = async () => {
      const r = await fetch(`${A}/api/v1/instances?limit=1000`,
        { headers: { Authorization: `Bearer ${env('PREXOR_TOKEN')}` } });
      const { items } = await r.json();
      return items.filter((i) => !['STOPPED', 'CRASHED'].includes(i.state)).length;
    };
    let seen;
    await eventually('the instances chart ends at the live instances the REST API lists', async () => {
      await page.reload();
      seen = await latest('instances-chart', 'live');
      return seen && seen.points >= 2 && seen.value === await live() && seen.value > 0;
    }, 30_000);
    const running = await latest('instances-chart', 'running');
    ensure(running && running.value <= seen.value, `running ${JSON.stringify(running)} above live`);
    const players = await latest('players-chart', 'players');
    const stat = Number(await page.textContent('#count-players .value'));
    ensure(players && players.value === stat, `players chart ${JSON.stringify(players)}, stat ${stat}`);
    ensure(await page.$$eval('#instances-chart polyline.line.live', (l) => l.length) >= 1,
      'no line drawn for the live instances');
    ensure(problems.length === 0, `the page logged errors: ${problems.join(' | ')}`);
    await shot('overview-charts');
  }],

  ...templateChecks({ page, A, env, shot, problems }),

  ...accessChecks({ page, A, B, env, shot, eventually, problems }),

  ...adminChecks({ page, A, B, env, shot, eventually, problems }),

  ['logout on replica A ends the session on replica B', async () => {
    const stolen = await sessionCookie(A);
    await page.goto(`${B}/ui/`);
    ensure(path() === '/ui/', `replica B does not take the session: ${page.url()}`);
    ensure((await page.textContent('#answered-by')).trim() === REPLICAS[1], 'B did not answer');
    await page.goto(`${A}/ui/`);
    await page.click('#sign-out');
    await page.waitForURL(`${A}/ui/login`);
    ensure(!(await sessionCookie(A)), 'the cookie outlived the logout');
    await shot('signed-out');
    // The old cookie put back (as one copied from the browser would be): B refuses it.
    await eventually('replica B refuses the logged-out session', async () => {
      await context.addCookies([stolen]);
      const r = await context.request.get(`${B}/ui/overview/summary`,
        { ...noForward, headers: { 'HX-Request': 'true' } });
      return r.status() === 401 && r.headers()['hx-redirect'] === '/ui/login';
    });
    await context.addCookies([stolen]);
    await page.goto(`${B}/ui/`);
    ensure(path() === '/ui/login', `B still serves the overview: ${page.url()}`);
    await shot('replica-b-after-logout');
  }],
];

const ok = await run(checks, { onFailure: (name) => shot(`failed-${name.replace(/\W+/g, '-')}`) });
await browser.close();
process.exit(ok ? 0 : 1);
