// The nodes pages in the browser: the list shows node-1 with its gateway and memory, a cordon /
// uncordon round trip from the node's page (its state following live), and a join token shown
// once (a validity it cannot read refused with the reason). Run by dashboard.mjs.

import { ensure } from './browser.mjs';

export function nodeChecks({ page, A, env, shot, eventually, problems }) {
  const token = env('PREXOR_TOKEN');
  const node = async (id) => (await fetch(`${A}/api/v1/nodes/${id}`,
    { headers: { Authorization: `Bearer ${token}` } })).json();

  return [
    ['the nodes page lists node-1; cordon and uncordon it from its page', async () => {
      await page.goto(`${A}/ui/nodes`);
      const row = 'tr.node[data-node="node-1"]';
      await page.waitForSelector(`${row}[data-state="ONLINE"]`);
      const text = await page.textContent(row);
      const { gateway } = await node('node-1');
      ensure(text.includes(gateway), `the row does not name gateway ${gateway}: ${text}`);
      ensure(/\d+ \/ \d+ MB/.test(text), `the row shows no reserved / allocatable memory: ${text}`);
      await shot('nodes');
      await page.click(`${row} a`);
      await page.waitForURL(`${A}/ui/nodes/node-1`);
      await page.evaluate(() => { window.notReloaded = true; });
      await page.click('#cordon-node');
      await page.waitForFunction(() => /node node-1 cordoned/.test(
        document.querySelector('#action-result').textContent));
      // The state follows the NODE_CORDONED event without a reload.
      await page.waitForSelector('#node-state[data-cordoned="true"]');
      ensure((await node('node-1')).cordoned === true, 'the REST API does not see it cordoned');
      await shot('node-cordoned');
      await page.click('#uncordon-node');
      await page.waitForSelector('#node-state[data-cordoned="false"]');
      ensure((await node('node-1')).cordoned === false, 'the REST API still sees it cordoned');
      ensure(await page.evaluate(() => window.notReloaded === true), 'the page was reloaded');
      ensure(problems.length === 0, `the page logged errors: ${problems.join(' | ')}`);
      await shot('node');
    }],

    ['a join token is shown once; a bad validity is refused with its reason', async () => {
      await page.goto(`${A}/ui/nodes`);
      await page.fill('#join-token-form input[name=node]', 'node-9');
      await page.fill('#join-token-form input[name=expiresIn]', 'forever');
      await page.click('#join-token-form button[type=submit]');
      await page.waitForSelector('#join-token-result .error');
      const refused = await page.textContent('#join-token-result .error');
      ensure(/expiresIn/.test(refused) && /forever/.test(refused), `a bad validity shows: ${refused}`);
      await page.fill('#join-token-form input[name=expiresIn]', '30m');
      await page.click('#join-token-form button[type=submit]');
      await page.waitForSelector('#join-token-shown');
      const shown = (await page.textContent('#join-token')).trim();
      ensure(shown.length > 16, `no token shown: ${shown}`);
      ensure(/Copy it now/.test(await page.textContent('#join-token-shown')), 'no "copy it now" note');
      await shot('node-join-token');
      await page.reload();
      await eventually('the token is gone after a reload',
        async () => !(await page.content()).includes(shown));
    }],
  ];
}
