// The dashboard's operating pages in the browser: groups (the form, live instances), an
// instance's console through the other replica, bulk kill from the instances list with the row
// following live, and what a viewer sees and may do. Run by dashboard.mjs, which passes its page
// and helpers; each check is [name, async () => {...}].

import { ensure, launch } from './browser.mjs';

export function operateChecks({ page, A, B, env, shot, eventually, problems }) {
  const spec = JSON.parse(env('PREXOR_FORM_SPEC'));
  const [viewer, viewerPassword] = env('PREXOR_VIEWER').split(':');
  const token = env('PREXOR_TOKEN');
  const rest = (method, path, body) => fetch(`${A}/api/v1${path}`, {
    method,
    headers: { Authorization: `Bearer ${token}`, 'Content-Type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const rowState = (id) => page.getAttribute(`.live tr.instance[data-instance="${id}"]`, 'data-state')
    .catch(() => null);
  /// Waits until the rows of `ids` on this page say RUNNING (the page reloads itself: no goto).
  const running = (ids, timeout = 90_000) => page.waitForFunction((ids) => ids.every((id) =>
    document.querySelector(`.live tr.instance[data-instance="${id}"]`)?.dataset.state === 'RUNNING'),
  ids, { timeout, polling: 200 });

  return [
    ['create a group in the form; its instances appear live without a reload', async () => {
      await page.goto(`${A}/ui/groups`);
      await page.click('#new-group');
      await page.waitForURL(`${A}/ui/groups/_new`);
      await page.fill('input[name=name]', 'web');
      await page.fill('input[name=platform]', spec.platform);
      await page.fill('input[name=version]', spec.version);
      await page.fill('textarea[name=command]', spec.command.join('\n'));
      await page.fill('input[name=portFrom]', String(spec.portRange.from));
      await page.fill('input[name=portTo]', String(spec.portRange.to));
      await page.selectOption('select[name=scaling]', 'STATIC');
      await page.fill('input[name=maxInstances]', '5');
      // The API's own validation, shown next to each field it names.
      await page.fill('input[name=memoryMb]', '32');
      await page.fill('input[name=minInstances]', '9');
      await page.click('#save-group');
      const memory = await page.textContent('[data-field=memoryMb] .field-error');
      ensure(/below the minimum of 64/.test(memory), `memoryMb shows: ${memory}`);
      const min = await page.textContent('[data-field=minInstances] .field-error');
      ensure(/above maxInstances/.test(min), `minInstances shows: ${min}`);
      await shot('group-form-errors');
      // And what the form itself cannot read.
      await page.fill('input[name=memoryMb]', 'lots');
      await page.click('#save-group');
      const unread = await page.textContent('[data-field=memoryMb] .field-error');
      ensure(/"lots" is not a whole number/.test(unread), `memoryMb shows: ${unread}`);
      await page.fill('input[name=memoryMb]', String(spec.memoryMb));
      await page.fill('input[name=minInstances]', '2');
      await page.click('#save-group');
      await page.waitForURL(`${A}/ui/groups/web`);
      await page.evaluate(() => { window.notReloaded = true; });
      // The scheduler places web-1 and web-2 and the node starts them: the page follows.
      await page.waitForSelector('tr.instance[data-instance="web-1"]', { timeout: 30_000 });
      await running(['web-1', 'web-2']);
      ensure(await page.evaluate(() => window.notReloaded === true), 'the page was reloaded');
      await shot('group');
      await page.goto(`${A}/ui/groups`);
      await page.waitForFunction(() => document.querySelector(
        'tr.group[data-group="web"] .badge[data-state="RUNNING"]')?.textContent === 'RUNNING: 2');
      await shot('groups');

      // An edit made against an old revision is a conflict, shown as one.
      await page.goto(`${A}/ui/groups/lobby/edit`);
      const current = await (await rest('GET', '/groups/lobby')).json();
      const changed = await rest('PUT', '/groups/lobby',
        { spec: { ...current.spec, drainSeconds: current.spec.drainSeconds + 1 } });
      ensure(changed.status === 200, `changing lobby: ${changed.status}`);
      await page.fill('input[name=stopGraceSeconds]', '45');
      await page.click('#save-group');
      const conflict = await page.textContent('#form-conflict');
      ensure(/Conflict/.test(conflict) && /revision/i.test(conflict), `the conflict shows: ${conflict}`);
      await shot('group-form-conflict');
      ensure(problems.length === 0, `the pages logged errors: ${problems.join(' | ')}`);
    }],

    ["an instance's console on replica B answers a command", async () => {
      await page.goto(`${B}/ui/instances/web-1`);
      await page.waitForFunction(() => /live/.test(document.querySelector('#console-status').textContent));
      await page.fill('#console-input', 'echo hello-from-the-dashboard');
      await page.press('#console-input', 'Enter');
      await page.waitForFunction(() => [...document.querySelectorAll('#console-lines .line')]
        .some((l) => l.textContent === 'hello-from-the-dashboard'), null, { timeout: 15_000 });
      // The answer may show before the node's acknowledgement comes back.
      await page.waitForFunction(() => /^sent: echo hello-from-the-dashboard$/.test(
        document.querySelector('#console-result').textContent));
      await page.fill('#console-input', 'say second');
      await page.press('#console-input', 'Enter');
      await page.waitForFunction(() => [...document.querySelectorAll('#console-lines .line')]
        .some((l) => l.textContent.includes('[Server] second')));
      // ↑ brings back the earlier commands, ↓ goes forward again.
      await page.press('#console-input', 'ArrowUp');
      ensure(await page.inputValue('#console-input') === 'say second', 'ArrowUp: not the last');
      await page.press('#console-input', 'ArrowUp');
      ensure(await page.inputValue('#console-input') === 'echo hello-from-the-dashboard',
        'ArrowUp twice: not the first');
      await page.press('#console-input', 'ArrowDown');
      ensure(await page.inputValue('#console-input') === 'say second', 'ArrowDown');
      // A command the API refuses shows its reason.
      await page.fill('#console-input', 'x'.repeat(5000));
      await page.press('#console-input', 'Enter');
      await page.waitForFunction(() => /1 to 4096 bytes/.test(
        document.querySelector('#console-result').textContent));
      await shot('console');
    }],

    ['kill an instance from the list; its row changes state live and it is healed', async () => {
      // A filter that names no state is refused, naming the states there are.
      const bogus = await page.goto(`${A}/ui/instances?state=bogus`);
      ensure(bogus.status() === 400, `an unknown state: ${bogus.status()}`);
      ensure(/"bogus" is not an instance state; one of SCHEDULED, .*CRASHED/.test(
        await page.textContent('.error')), 'the refusal does not name the states');
      await page.goto(`${A}/ui/instances?group=web`);
      await running(['web-1', 'web-2'], 30_000);
      // Every state (and attempt) the row shows, from now on, without a reload.
      const before = Number(await page.getAttribute('#instance-rows tr.instance[data-instance="web-1"]', 'data-attempt'));
      await page.evaluate(() => {
        window.notReloaded = true;
        const row = document.querySelector('#instance-rows tr.instance[data-instance="web-1"]');
        window.seen = [`${row.dataset.state}#${row.dataset.attempt}`];
        window.swaps = 0;
        document.body.addEventListener('htmx:afterSettle', () => {
          window.swaps += 1;
          const row = document.querySelector('#instance-rows tr.instance[data-instance="web-1"]');
          const now = row && `${row.dataset.state}#${row.dataset.attempt}`;
          if (now && window.seen[window.seen.length - 1] !== now) window.seen.push(now);
        });
      });
      await page.check('input[name=id][value="web-1"]');
      const killed = Date.now();
      await page.click('#bulk-kill');
      await page.waitForSelector('#bulk-results li.ok[data-instance="web-1"]');
      // The selection outlives the rows' reloads.
      ensure(await page.isChecked('input[name=id][value="web-1"]'), 'the selection was lost');
      // Healed: the STATIC group runs web-1 again, a new attempt (a kill ends the old one in
      // about a second, so the states between may pass between two reloads).
      await page.waitForFunction((before) => {
        const row = document.querySelector('#instance-rows tr.instance[data-instance="web-1"]');
        return row && row.dataset.state === 'RUNNING' && Number(row.dataset.attempt) > before;
      }, before, { timeout: 60_000, polling: 100 });
      const healedWithin = Date.now() - killed;
      ensure(await page.evaluate(() => window.notReloaded === true), 'the page was reloaded');
      const seen = await page.evaluate(() => window.seen);
      const swaps = await page.evaluate(() => window.swaps);
      ensure(await rowState('web-2') === 'RUNNING', 'web-2 was touched');
      ensure(await page.$$eval('table#instances', (t) => t.length) === 1, 'the rows went elsewhere');
      ensure(await page.$('#bulk-results li.ok[data-instance="web-1"]'), 'the result went away');
      await shot('instances-healed');
      await page.goto(`${A}/ui/instances/web-1`);
      await shot('instance');
      ensure(seen.length > 1, `the row did not change live: ${seen.join(' → ')} (${swaps} swaps)`);
      ensure(healedWithin < 25_000, `the row followed only the slow poll (${healedWithin} ms)`);
      console.error(`web-1 went through ${seen.join(' → ')} in ${healedWithin} ms (${swaps} swaps)`);
    }],

    ['a viewer sees no write controls and a forged POST gets 403', async () => {
      const second = await launch();
      try {
        const viewerPage = await second.context.newPage();
        await viewerPage.goto(`${A}/ui/login`);
        await viewerPage.fill('input[name=username]', viewer);
        await viewerPage.fill('input[name=password]', viewerPassword);
        await viewerPage.click('button[type=submit]');
        await viewerPage.waitForURL(`${A}/ui/`);
        const absent = async (url, selectors) => {
          await viewerPage.goto(url);
          for (const selector of selectors) {
            ensure(await viewerPage.$(selector) === null, `${url} shows ${selector} to a viewer`);
          }
        };
        await absent(`${A}/ui/groups`, ['#new-group']);
        await absent(`${A}/ui/groups/web`, ['#edit-group', '#start-instance', 'button[data-action]']);
        await absent(`${A}/ui/instances/web-2`, ['#console-form', '#stop-instance', '#kill-instance']);
        ensure(await viewerPage.$('#console-lines'), 'the viewer cannot read the console');
        await absent(`${A}/ui/instances`, ['#bulk-stop', '#bulk-kill', 'input[name=id]']);
        await absent(`${A}/ui/nodes`, ['#join-token-form']);
        await absent(`${A}/ui/templates`, ['#upload-form']);
        await absent(`${A}/ui/nodes/node-1`, ['#node-actions', '#drain-form']);
        ensure(await viewerPage.$('#node-state'), 'the viewer cannot read the node');
        await viewerPage.waitForSelector('tr.instance[data-instance="web-2"]');
        await viewerPage.screenshot({ path: `${env('PREXOR_SHOTS')}/viewer-instances.png`, fullPage: true });
        const csrf = await viewerPage.getAttribute('input[name=csrf]', 'value');
        const forge = (path, form) => second.context.request.post(`${A}${path}`, {
          headers: { Origin: A, 'X-CSRF-Token': csrf }, form, maxRedirects: 0, failOnStatusCode: false,
        });
        for (const [path, form] of [
          ['/ui/instances/_bulk', { action: 'kill', id: 'web-2' }],
          ['/ui/instances/web-2/kill', {}],
          ['/ui/instances/web-2/command', { command: 'stop' }],
          ['/ui/groups/_new', { name: 'forged', memoryMb: '256' }],
          ['/ui/groups/web/edit', { name: 'web', revision: '1', minInstances: '0' }],
          ['/ui/nodes/node-1/cordon', {}],
          ['/ui/nodes/_join-token', { node: 'node-9' }],
          ['/ui/templates/base/rollback', { version: '1' }],
          ['/ui/modules/extras/install', { version: '1.0' }],
        ]) {
          const r = await forge(path, form);
          ensure(r.status() === 403, `a viewer's POST ${path} got ${r.status()}: ${await r.text()}`);
          ensure(/lacks|permission|not allowed|requires/i.test(await r.text()),
            `${path}: the refusal does not say why`);
        }
        const forbidden = await second.context.request.get(`${A}/ui/groups/_new`, { failOnStatusCode: false });
        ensure(forbidden.status() === 403, `the viewer opens the group form: ${forbidden.status()}`);
      } finally {
        await second.close();
      }
      const still = await (await rest('GET', '/instances/web-2')).json();
      ensure(still.state === 'RUNNING', `web-2 after the viewer's POSTs: ${still.state}`);
    }],

    ["a deployment is paused, resumed and rolled back from the group's page", async () => {
      // A rollout that cannot finish: the new servers crash soon after they start.
      const current = await (await rest('GET', '/groups/web')).json();
      const bad = { ...current.spec, command: [...current.spec.command, '--crash-after', '300'] };
      const created = await rest('POST', '/groups/web/deployments',
        { spec: bad, batchSize: 1, maxUnavailable: 1 });
      const deployment = await created.json();
      ensure(created.status === 201, `creating the deployment: ${created.status} ${JSON.stringify(deployment)}`);
      const { id } = deployment;
      await page.goto(`${A}/ui/groups/web`);
      const row = `tr.deployment[data-deployment="${id}"]`;
      const act = async (action, said, state) => {
        await page.click(`${row} button[data-action="${action}"]`);
        await page.waitForFunction((said) => new RegExp(said).test(
          document.querySelector('#action-result').textContent), said);
        if (state) {
          await page.waitForSelector(`${row}[data-state="${state}"]`);
        }
      };
      await page.waitForSelector(`${row}[data-state="ROLLING"] progress`);
      await act('pause', 'is PAUSED', 'PAUSED');
      await act('resume', 'is ROLLING', 'ROLLING');
      await act('rollback', 'rolls back to revision', null);
      await page.waitForFunction((row) => /rolling back/.test(document.querySelector(row)?.textContent),
        row);
      await shot('group-deployment');
      // Rolled back and done: every instance runs the old spec again.
      await page.waitForSelector(`${row}[data-state="DONE"]`, { timeout: 90_000 });
      await running(['web-1', 'web-2']);
    }],
  ];
}
