// The templates and modules pages in the browser: a template version uploaded from the list and
// another from the template's page (a file that is no tar.gz refused with the reason), then a
// roll back to the first, each shown live; a module (its versions uploaded through the REST API)
// installed, upgraded and uninstalled from its page, its state following live. Run by
// dashboard.mjs.

import { execFileSync } from 'node:child_process';
import { mkdtempSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ensure } from './browser.mjs';

/// A .tar.gz holding server.properties with `motd`; its path.
function layer(dir, motd) {
  const files = join(dir, motd);
  mkdirSync(files);
  writeFileSync(join(files, 'server.properties'), `motd=${motd}\n`);
  const archive = join(dir, `${motd}.tar.gz`);
  execFileSync('tar', ['-czf', archive, '-C', files, 'server.properties']);
  return archive;
}

export function templateChecks({ page, A, env, shot, problems }) {
  const token = env('PREXOR_TOKEN');
  const template = async (name) => (await fetch(`${A}/api/v1/templates/${name}`,
    { headers: { Authorization: `Bearer ${token}` } })).json();
  const result = async (pattern) => {
    await page.waitForFunction((pattern) => new RegExp(pattern).test(
      document.querySelector('#upload-result')?.textContent || ''), pattern);
    return page.textContent('#upload-result');
  };

  return [
    ['upload a template version and roll it back', async () => {
      const dir = mkdtempSync(join(tmpdir(), 'prexor-layers-'));
      const [one, two] = [layer(dir, 'first'), layer(dir, 'second')];
      const junk = join(dir, 'junk.tar.gz');
      writeFileSync(junk, 'not a tar.gz at all\n');

      await page.goto(`${A}/ui/templates`);
      await page.fill('#upload-form input[name=name]', 'base');
      await page.setInputFiles('#upload-file', one);
      await page.click('#upload-submit');
      await result('version 1 of template base uploaded');
      // The list follows the upload's event.
      await page.waitForSelector('tr.template[data-template="base"][data-current="1"]');
      await shot('templates');

      await page.click('tr.template[data-template="base"] a');
      await page.waitForURL(`${A}/ui/templates/base`);
      await page.setInputFiles('#upload-file', junk);
      await page.click('#upload-submit');
      const refused = await result('body');
      ensure(/gzip|archive|tar|invalid/i.test(refused), `a file that is no tar.gz shows: ${refused}`);
      await page.setInputFiles('#upload-file', two);
      await page.click('#upload-submit');
      await result('version 2 of template base uploaded');
      await page.waitForSelector('#versions[data-current="2"]');

      await page.click('tr.version[data-version="1"] button[data-action="rollback"]');
      await page.waitForSelector('#versions[data-current="1"]');
      ensure(/is back at version 1/.test(await page.textContent('#template-versions')),
        'no result shown for the roll back');
      const stored = await template('base');
      ensure(stored.current === 1 && stored.versions.length === 2,
        `the REST API shows ${JSON.stringify(stored)}`);
      ensure(problems.length === 0, `the page logged errors: ${problems.join(' | ')}`);
      await shot('template');
    }],

    ['install, upgrade and uninstall a module from its page', async () => {
      const dir = mkdtempSync(join(tmpdir(), 'prexor-modules-'));
      for (const version of ['1.0', '1.1']) {
        const stored = await fetch(`${A}/api/v1/modules/extras/versions/${version}`, {
          method: 'PUT',
          headers: { Authorization: `Bearer ${token}`, 'Content-Type': 'application/gzip' },
          body: readFileSync(layer(dir, `extras-${version}`)),
        });
        ensure(stored.status === 201, `uploading extras ${version}: ${stored.status} ${await stored.text()}`);
      }
      await page.goto(`${A}/ui/modules`);
      await page.waitForSelector('tr.module[data-module="extras"][data-state="NEW"]');
      await page.click('tr.module[data-module="extras"] a');
      await page.waitForURL(`${A}/ui/modules/extras`);
      const act = async (selector, said, state, active) => {
        await page.click(selector);
        await page.waitForFunction((said) => new RegExp(said).test(
          document.querySelector('#action-result').textContent), said);
        await page.waitForSelector(`#module-state[data-state="${state}"]`, { timeout: 30_000 });
        await page.waitForFunction((active) =>
          document.querySelector('#module-active')?.textContent.trim() === active, active);
      };
      await act('tr.version[data-version="1.0"] button[data-action="install"]',
        'install 1.0 of module extras requested', 'ACTIVE', '1.0');
      await act('tr.version[data-version="1.1"] button[data-action="upgrade"]',
        'upgrade 1.1 of module extras requested', 'ACTIVE', '1.1');
      await shot('module');
      page.once('dialog', (dialog) => dialog.accept());
      await act('#uninstall-module', 'uninstall of module extras requested', 'UNINSTALLED', '–');
      const history = await page.$$eval('#module-history tr.change', (rows) => rows.length);
      ensure(history === 3, `the module's history lists ${history} changes`);
      ensure(problems.length === 0, `the page logged errors: ${problems.join(' | ')}`);
    }],
  ];
}
