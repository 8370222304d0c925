// The audit log and backups pages in the browser: the log filtered by action, actor and target
// (the same entries, in the same order, as GET /api/v1/audit) and paged one entry at a time
// through "Older entries"; a backup created, verified and downloaded (the same bytes as the REST
// download), restored after its dry run, with the groups and the admin's session still there;
// and a viewer that neither sees nor reaches either page. Run by dashboard.mjs.

import { readFileSync } from 'node:fs';
import { request } from 'playwright-core';
import { ensure } from './browser.mjs';

export function adminChecks({ page, A, B, env, shot, eventually, problems }) {
  const token = env('PREXOR_TOKEN');
  const [viewer, viewerPassword] = env('PREXOR_VIEWER').split(':');
  const rest = (path, init = {}) => fetch(`${A}/api/v1${path}`,
    { ...init, headers: { Authorization: `Bearer ${token}`, ...(init.headers || {}) } });
  const json = async (path) => {
    const r = await rest(path);
    ensure(r.status === 200, `GET ${path}: ${r.status} ${await r.clone().text()}`);
    return r.json();
  };
  const attrs = (selector, name) => page.$$eval(selector,
    (rows, name) => rows.map((r) => r.getAttribute(name)), name);
  const pathname = () => new URL(page.url()).pathname;

  return [
    ['the audit log lists the groups created earlier; filters and paging work', async () => {
      await page.goto(`${A}/ui/audit`);
      await page.waitForSelector('table#audit tr.entry');
      // By action: the group made through the REST API (lobby) and the one made in the form (web).
      await page.fill('#audit-filters input[name=action]', 'group.create');
      await page.click('#audit-filter');
      await page.waitForURL(/action=group\.create/);
      const actions = await attrs('tr.entry', 'data-action');
      ensure(actions.length >= 2 && actions.every((a) => a === 'group.create'),
        `filtering by group.create shows ${actions.join(', ')}`);
      const targets = await attrs('tr.entry', 'data-target');
      const logged = (await json('/audit?action=group.create')).entries;
      ensure(JSON.stringify(targets) === JSON.stringify(logged.map((e) => e.target)),
        `the page lists ${targets}, the REST log ${logged.map((e) => e.target)}`);
      for (const group of ['lobby', 'web']) {
        ensure(targets.includes(group), `no group.create entry for ${group}: ${targets}`);
      }
      // Its before / after, folded: the created group's spec as the REST log records it.
      const lobby = 'tr.entry[data-target="lobby"]';
      ensure(!(await page.isVisible(`${lobby} pre.after`)), 'the change is not folded');
      await page.click(`${lobby} details summary`);
      const after = JSON.parse(await page.textContent(`${lobby} pre.after`));
      const recorded = logged.find((e) => e.target === 'lobby').after;
      ensure(after.platform && JSON.stringify(after) === JSON.stringify(recorded),
        `lobby's entry shows ${JSON.stringify(after)}, the REST log ${JSON.stringify(recorded)}`);
      ensure(await page.$(`${lobby} pre.before`) === null, 'a creation shows a before');
      ensure(/\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC/.test(await page.textContent(lobby)), 'no time shown');
      await shot('audit');

      // One entry a page: "Older entries" walks the same entries as the REST log, each once.
      await page.goto(`${A}/ui/audit?action=group.create&limit=1`);
      ensure(await page.$('#audit-newest') === null, 'the first page links to the newest entries');
      const walked = [];
      for (let i = 0; i < 20; i += 1) {
        const rows = await attrs('tr.entry', 'data-target');
        ensure(rows.length === 1, `a page of one shows ${rows.length} entries`);
        walked.push(rows[0]);
        const older = await page.$('#audit-older');
        if (!older) break;
        await Promise.all([page.waitForURL(/after=/), older.click()]);
        ensure(await page.$('#audit-newest'), 'an older page does not link back to the newest');
        ensure(await page.inputValue('#audit-filters input[name=action]') === 'group.create',
          'the filter is lost on the older page');
      }
      ensure(JSON.stringify(walked) === JSON.stringify(logged.map((e) => e.target)),
        `paging one at a time gave ${walked}, the REST log ${logged.map((e) => e.target)}`);

      // By actor and target: node-1 cordoned and uncordoned from its page by the admin.
      await page.goto(`${A}/ui/audit`);
      await page.fill('#audit-filters input[name=actor]', 'admin');
      await page.fill('#audit-filters input[name=target]', 'node-1');
      await page.click('#audit-filter');
      await page.waitForURL(/target=node-1/);
      const nodeActions = await attrs('tr.entry', 'data-action');
      ensure(nodeActions.includes('node.cordon') && nodeActions.includes('node.uncordon'),
        `node-1's entries: ${nodeActions}`);
      ensure((await attrs('tr.entry', 'data-actor')).every((a) => a === 'admin'), 'another actor listed');
      ensure((await attrs('tr.entry', 'data-target')).every((t) => t === 'node-1'), 'another target listed');
      await page.click('#audit-clear');
      await page.waitForURL(`${A}/ui/audit`);
      ensure(problems.length === 0, `the page logged errors: ${problems.join(' | ')}`);
    }],

    ['create a backup, verify it, download it; a restore shows its dry run first and then restores', async () => {
      await page.goto(`${A}/ui/backups`);
      await page.click('#create-backup');
      await page.waitForFunction(() => /backup \S+ created/.test(
        document.querySelector('#action-result')?.textContent || ''), null, { timeout: 60_000 });
      const said = await page.textContent('#action-result');
      const id = said.match(/backup (\S+) created/)[1];
      const row = `tr.backup[data-backup="${id}"]`;
      // The list reloads by itself once the backup is made.
      await page.waitForSelector(row);
      const stored = await json(`/backups/${id}`);
      ensure(stored.createdBy === 'admin' && stored.collections.groups >= 2,
        `the REST API shows ${JSON.stringify(stored)}`);

      await page.click(`${row} button[data-action="verify"]`);
      await page.waitForSelector(`#verified[data-backup="${id}"]`, { timeout: 30_000 });
      ensure(/every count and hash matches/.test(await page.textContent('#verified')), 'no verification shown');
      await shot('backups');

      // The download (the dashboard's route, with the cookie) is the REST download's bytes.
      const [download] = await Promise.all([
        page.waitForEvent('download'),
        page.click(`${row} a[data-action="download"]`),
      ]);
      ensure(download.suggestedFilename() === `${id}.tar.gz`, `downloaded as ${download.suggestedFilename()}`);
      const got = readFileSync(await download.path());
      const viaRest = await rest(`/backups/${id}/archive`);
      ensure(viaRest.status === 200, `the REST download: ${viaRest.status}`);
      const expected = Buffer.from(await viaRest.arrayBuffer());
      ensure(got.length > 0 && got[0] === 0x1f && got[1] === 0x8b, `not a gzip: ${got.length} bytes`);
      ensure(got.equals(expected), `the download (${got.length} bytes) differs from REST's (${expected.length})`);
      const anonymous = await fetch(`${A}/ui/backups/${id}/archive`, { redirect: 'manual' });
      ensure(anonymous.status >= 300 && anonymous.status < 400,
        `the archive without a session: ${anonymous.status}`);

      // The restore: the dry run first, and only then the button that restores.
      const groupsBefore = (await json('/groups')).items.map((g) => g.name).sort();
      await page.click(`${row} a[data-action="restore"]`);
      await page.waitForURL(`${A}/ui/backups/${id}`);
      ensure(await page.$('#restore-now') === null, 'the restore is offered before its dry run');
      await page.click('#restore-preview');
      await page.waitForSelector('#restore-dry-run', { timeout: 60_000 });
      ensure(/nothing was changed/.test(await page.textContent('#restore-dry-run')), 'the dry run does not say so');
      const groupsPlan = '#restore-dry-run tr[data-collection="groups"]';
      ensure(await page.getAttribute(groupsPlan, 'data-remove') === '0'
        && await page.getAttribute(groupsPlan, 'data-add') === '0',
        `a backup just taken would change groups: ${await page.textContent(groupsPlan)}`);
      ensure(/restored \(the archive was made by this cluster\)/.test(await page.textContent('#restore-identity')),
        `identity: ${await page.textContent('#restore-identity')}`);
      ensure((await json('/audit?action=backup.restore')).entries.every((e) => e.target !== id),
        'the dry run restored');
      await shot('backup-dry-run');
      page.once('dialog', (dialog) => dialog.accept());
      await page.click('#restore-now');
      await page.waitForSelector('#restore-done', { timeout: 90_000 });
      const leases = Number(await page.getAttribute('#restore-done', 'data-leases'));
      ensure(leases >= groupsBefore.length, `the restore held ${leases} leases`);
      await shot('backup-restored');

      // The groups are still there, none being deleted; the restore is in the log.
      const groupsAfter = (await json('/groups')).items;
      ensure(JSON.stringify(groupsAfter.map((g) => g.name).sort()) === JSON.stringify(groupsBefore),
        `groups before ${groupsBefore}, after ${groupsAfter.map((g) => g.name)}`);
      ensure(groupsAfter.every((g) => !g.deleting), `a group is being deleted: ${JSON.stringify(groupsAfter)}`);
      ensure((await json('/audit?action=backup.restore')).entries.some((e) => e.target === id),
        'no backup.restore entry');
      // The admin is still signed in, in the dashboard (on both replicas) and on the REST API.
      ensure((await rest('/auth/me')).status === 200, 'the REST session ended with the restore');
      for (const origin of [A, B]) {
        await eventually(`replica ${origin} still takes changes`, async () => {
          await page.goto(`${origin}/ui/backups`);
          return pathname() === '/ui/backups' && (await page.$('#create-backup')) !== null;
        }, 30_000);
      }
      await page.goto(`${A}/ui/audit?action=backup.restore`);
      ensure((await attrs('tr.entry', 'data-target')).includes(id), 'the audit page lacks the restore');

      // Delete from the list: its row goes.
      await page.goto(`${A}/ui/backups`);
      page.once('dialog', (dialog) => dialog.accept());
      await page.click(`${row} button[data-action="delete"]`);
      await page.waitForFunction((id) => new RegExp(`backup ${id} deleted`).test(
        document.querySelector('#action-result')?.textContent || ''), id);
      await page.waitForSelector(row, { state: 'detached' });
      ensure((await rest(`/backups/${id}`)).status === 404, 'the REST API still has the backup');
      ensure(problems.length === 0, `the page logged errors: ${problems.join(' | ')}`);
    }],

    ['a viewer sees neither the audit log nor backups; its requests get 403', async () => {
      // A backup for the viewer to try: made through the REST API.
      const made = await rest('/backups', { method: 'POST' });
      ensure(made.status === 201, `creating a backup: ${made.status}`);
      const { id } = await made.json();
      // A cookie jar of its own: the admin's page stays signed in.
      const http = await request.newContext();
      try {
        const signIn = await http.post(`${A}/ui/login`, {
          headers: { Origin: A }, form: { username: viewer, password: viewerPassword }, maxRedirects: 0,
          failOnStatusCode: false,
        });
        ensure(signIn.status() === 303 || signIn.status() === 302, `the viewer's sign-in: ${signIn.status()}`);
        const overview = await (await http.get(`${A}/ui/`)).text();
        ensure(!overview.includes('href="/ui/audit"') && !overview.includes('href="/ui/backups"'),
          'the viewer\'s navigation lists the audit log or backups');
        const csrf = overview.match(/name="csrf" value="([^"]+)"/)?.[1];
        ensure(csrf, 'no CSRF token on the viewer\'s overview');
        for (const path of ['/ui/audit', '/ui/backups', `/ui/backups/${id}`, `/ui/backups/${id}/archive`]) {
          const r = await http.get(`${A}${path}`, { failOnStatusCode: false, maxRedirects: 0 });
          ensure(r.status() === 403, `the viewer's GET ${path}: ${r.status()}`);
        }
        for (const [path, form] of [
          ['/ui/backups/_create', {}],
          [`/ui/backups/${id}/verify`, {}],
          [`/ui/backups/${id}/delete`, {}],
          [`/ui/backups/${id}/restore`, { step: 'preview' }],
          [`/ui/backups/${id}/restore`, { step: 'restore' }],
        ]) {
          const r = await http.post(`${A}${path}`, {
            headers: { Origin: A, 'X-CSRF-Token': csrf }, form, maxRedirects: 0, failOnStatusCode: false,
          });
          ensure(r.status() === 403 && /backups:(read|write)/.test(await r.text()),
            `the viewer's POST ${path}: ${r.status()} ${await r.text()}`);
        }
      } finally {
        await http.dispose();
      }
      ensure((await rest(`/backups/${id}`)).status === 200, 'the viewer\'s requests changed the backup');
      ensure((await rest(`/backups/${id}`, { method: 'DELETE' })).status === 204, 'deleting the backup');
    }],
  ];
}
