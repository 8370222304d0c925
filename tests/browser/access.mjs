// Users, roles and API tokens: creating a user in the form (a bad password refused with its
// reason) who then signs in; disabling, enabling and resetting it from its page; a custom role
// given to it, refused deletion while assigned; an API token shown once that works as a Bearer
// token until revoked. Run by dashboard.mjs. A second user signs in in a browser of its own, so
// the admin's session (which later checks sign out) is never touched.

import { ensure, launch } from './browser.mjs';

const USER = 'ulla';
const PASSWORD = 'ulla-password-1';
const NEW_PASSWORD = 'ulla-password-2';
const ROLE = 'auditors';

export function accessChecks({ page, A, env, shot, eventually, problems }) {
  const token = env('PREXOR_TOKEN');
  const rest = async (method, path, { bearer = token, body } = {}) => fetch(`${A}/api/v1${path}`, {
    method,
    headers: { Authorization: `Bearer ${bearer}`, 'Content-Type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const json = async (path) => {
    const r = await rest('GET', path);
    if (!r.ok) throw new Error(`GET ${path}: ${r.status} ${await r.text()}`);
    return r.json();
  };
  /// The page's errors since `from` (what earlier checks logged is theirs).
  const noNewProblems = (from) => {
    const logged = problems.slice(from);
    ensure(logged.length === 0, `the page logged errors: ${logged.join(' | ')}`);
  };
  const resultSays = (selector, pattern) => page.waitForFunction(
    ([s, p]) => new RegExp(p).test(document.querySelector(s)?.textContent || ''), [selector, pattern]);

  /// Signs `user` in on a browser of its own: its page then, or the sign-in refusal.
  async function signIn(browser, user, password) {
    const other = browser.context.pages()[0] || await browser.context.newPage();
    await other.goto(`${A}/ui/login`);
    await other.fill('input[name=username]', user);
    await other.fill('input[name=password]', password);
    await other.click('button[type=submit]');
    await other.waitForLoadState();
    return other;
  }

  return [
    ['create a user with a role in the form; a bad password is refused with its reason; the new user signs in', async () => {
      const logged = problems.length;
      await page.goto(`${A}/ui/users`);
      await page.waitForSelector('tr.user[data-user="admin"]');
      const form = '#new-user-form';
      await page.fill(`${form} input[name=username]`, USER);
      await page.fill(`${form} input[name=password]`, 'too-short');
      await page.check(`${form} input[name=roles][value=viewer]`);
      await page.click('#create-user');
      await page.waitForSelector(`${form} [data-field="password"].invalid .field-error`);
      const reason = await page.textContent(`${form} [data-field="password"] .field-error`);
      ensure(/at least 12 characters/.test(reason), `a short password shows: ${reason}`);
      ensure(await page.inputValue(`${form} input[name=username]`) === USER, 'the user name was not kept');
      ensure(await page.isChecked(`${form} input[name=roles][value=viewer]`), 'the role was not kept');
      ensure((await rest('GET', `/users/${USER}`)).status === 404, 'the refused user exists');
      await page.fill(`${form} input[name=password]`, PASSWORD);
      await page.click('#create-user');
      await page.waitForSelector('#user-created');
      // The list follows without a reload.
      await page.waitForSelector(`tr.user[data-user="${USER}"][data-roles="viewer"]`);
      const made = await json(`/users/${USER}`);
      ensure(JSON.stringify(made.roles) === '["viewer"]' && made.disabled === false,
        `the REST API shows ${JSON.stringify(made)}`);
      await shot('users');
      noNewProblems(logged);

      const second = await launch();
      try {
        const other = await signIn(second, USER, PASSWORD);
        ensure(new URL(other.url()).pathname === '/ui/', `${USER} did not sign in: ${other.url()}`);
        ensure((await other.textContent('#signed-in-user')).trim() === USER, 'the new user is not shown');
        // A viewer: no Users, Roles or API tokens in the navigation, and refused them anyway.
        const nav = await other.$$eval('header.top nav a', (links) => links.map((a) => a.textContent));
        ensure(!nav.some((t) => /Users|Roles|API tokens/.test(t)), `a viewer's navigation: ${nav}`);
        const denied = await second.context.request.get(`${A}/ui/users`, { failOnStatusCode: false });
        ensure(denied.status() === 403 && /users:read/.test(await denied.text()),
          `a viewer opens /ui/users: ${denied.status()}`);
        const csrf = await other.getAttribute('input[name=csrf]', 'value');
        for (const [path, form] of [
          ['/ui/users/_new', { username: 'forged', password: 'forged-password-1', roles: 'admin' }],
          ['/ui/users/admin/disable', {}],
          ['/ui/roles/_new', { name: 'forged', permissions: '*' }],
          ['/ui/tokens/_new', { name: 'forged' }],
        ]) {
          const r = await second.context.request.post(`${A}${path}`, {
            headers: { Origin: A, 'X-CSRF-Token': csrf }, form, failOnStatusCode: false,
          });
          ensure(r.status() === 403 && /lacks the permission/.test(await r.text()),
            `a viewer's POST ${path} got ${r.status()}`);
        }
        ensure((await rest('GET', '/users/forged')).status === 404, 'the forged user exists');
      } finally {
        await second.close();
      }
    }],

    ["disable a user from its page, which ends its session; enable it and reset its password", async () => {
      const logged = problems.length;
      const second = await launch();
      try {
        const other = await signIn(second, USER, PASSWORD);
        ensure(new URL(other.url()).pathname === '/ui/', `${USER} did not sign in: ${other.url()}`);
        await page.goto(`${A}/ui/users`);
        await page.click(`tr.user[data-user="${USER}"] a`);
        await page.waitForURL(`${A}/ui/users/${USER}`);
        await page.click('#disable-user');
        await resultSays('#user-result', `user ${USER} disabled`);
        await page.waitForSelector('#user-state[data-disabled="true"]');
        ensure((await json(`/users/${USER}`)).disabled === true, 'the REST API sees it enabled');
        await other.reload();
        ensure(new URL(other.url()).pathname === '/ui/login', `the disabled user's session goes on: ${other.url()}`);
        await signIn(second, USER, PASSWORD);
        const refused = await other.textContent('#sign-in-error');
        ensure(/disabled/.test(refused), `a disabled user's sign-in shows: ${refused}`);

        await page.click('#enable-user');
        await resultSays('#user-result', `user ${USER} enabled`);
        await page.waitForSelector('#user-state[data-disabled="false"]');
        await page.fill('#reset-password-form input[name=password]', 'short');
        await page.click('#reset-password');
        await resultSays('#user-result .error', 'password: must be at least 12 characters');
        await page.fill('#reset-password-form input[name=password]', NEW_PASSWORD);
        await page.click('#reset-password');
        await resultSays('#user-result .ok', `password of user ${USER} reset`);
        await shot('user');
        await signIn(second, USER, PASSWORD);
        ensure(new URL(other.url()).pathname === '/ui/login', 'the old password still signs in');
        await signIn(second, USER, NEW_PASSWORD);
        ensure(new URL(other.url()).pathname === '/ui/', `the new password does not sign in: ${other.url()}`);
      } finally {
        await second.close();
      }
      noNewProblems(logged);
    }],

    ['create a custom role and give it to the user; delete it refused while assigned', async () => {
      const logged = problems.length;
      await page.goto(`${A}/ui/roles`);
      await page.waitForSelector('tr.role[data-role="admin"][data-builtin="true"]');
      const form = '#new-role-form';
      await page.fill(`${form} input[name=name]`, 'Not A Name!');
      await page.check(`${form} input[name=permissions][value="audit:read"]`);
      await page.click('#create-role');
      await page.waitForSelector(`${form} [data-field="name"].invalid .field-error`);
      ensure(await page.isChecked(`${form} input[name=permissions][value="audit:read"]`), 'the ticks were not kept');
      await page.fill(`${form} input[name=name]`, ROLE);
      await page.fill(`${form} input[name=description]`, 'reads the audit log and the groups');
      await page.check(`${form} input[name=permissions][value="groups:read"]`);
      await page.click('#create-role');
      await page.waitForSelector('#role-created');
      await page.waitForSelector(`tr.role[data-role="${ROLE}"][data-builtin="false"]`);
      const role = await json(`/roles/${ROLE}`);
      ensure(JSON.stringify([...role.permissions].sort()) === '["audit:read","groups:read"]',
        `the REST API shows ${JSON.stringify(role)}`);
      await shot('roles');

      // Built-in roles are read-only.
      await page.goto(`${A}/ui/roles/admin`);
      ensure(await page.$('#role-read-only') && !(await page.$('#role-form')), 'admin is editable');

      await page.goto(`${A}/ui/users/${USER}`);
      await page.check(`#user-roles-form input[name=roles][value="${ROLE}"]`);
      await page.click('#save-roles');
      await resultSays('#user-result .ok', `roles of user ${USER} saved`);
      await page.waitForSelector(`#user-roles[data-roles="${ROLE},viewer"], #user-roles[data-roles="viewer,${ROLE}"]`);
      ensure((await json(`/users/${USER}`)).roles.includes(ROLE), 'the REST API does not see the role given');

      await page.goto(`${A}/ui/roles/${ROLE}`);
      await page.check('#role-form input[name=permissions][value="nodes:read"]');
      await page.click('#save-role');
      await resultSays('#role-result .ok', `role ${ROLE} saved`);
      ensure((await json(`/roles/${ROLE}`)).permissions.includes('nodes:read'), 'the edit did not reach the API');
      page.once('dialog', (dialog) => dialog.accept());
      await page.click('#delete-role');
      await resultSays('#role-result .error', `assigned to ${USER}`);
      ensure((await rest('GET', `/roles/${ROLE}`)).status === 200, 'the assigned role was deleted');
      await shot('role');

      // Taken from the user, it goes; then the user goes too.
      await page.goto(`${A}/ui/users/${USER}`);
      await page.uncheck(`#user-roles-form input[name=roles][value="${ROLE}"]`);
      await page.click('#save-roles');
      await page.waitForSelector('#user-roles[data-roles="viewer"]');
      await page.goto(`${A}/ui/roles/${ROLE}`);
      page.once('dialog', (dialog) => dialog.accept());
      await page.click('#delete-role');
      await page.waitForURL(`${A}/ui/roles?deleted=${ROLE}`);
      ensure(await page.$('#role-deleted') && !(await page.$(`tr.role[data-role="${ROLE}"]`)), 'the role is listed');
      ensure((await rest('GET', `/roles/${ROLE}`)).status === 404, 'the REST API still has the role');
      await page.goto(`${A}/ui/users/${USER}`);
      page.once('dialog', (dialog) => dialog.accept());
      await page.click('#delete-user');
      await page.waitForURL(`${A}/ui/users?deleted=${USER}`);
      ensure(!(await page.$(`tr.user[data-user="${USER}"]`)), 'the deleted user is listed');
      ensure((await rest('GET', `/users/${USER}`)).status === 404, 'the REST API still has the user');
      noNewProblems(logged);
    }],

    ['an API token is shown once and works as a Bearer token; revoked it is refused', async () => {
      const logged = problems.length;
      await page.goto(`${A}/ui/tokens`);
      const form = '#new-token-form';
      await page.fill(`${form} input[name=name]`, 'ci');
      await page.fill(`${form} input[name=expiresIn]`, 'forever');
      await page.click('#create-token');
      await resultSays('#token-result .error', 'expiresIn');
      ensure(/forever/.test(await page.textContent('#token-result')), 'the refusal does not name the value');
      await page.fill(`${form} input[name=expiresIn]`, '30d');
      await page.check(`${form} input[name=permissions][value="groups:read"]`);
      await page.click('#create-token');
      await page.waitForSelector('#token-shown');
      const secret = (await page.textContent('#token-secret')).trim();
      ensure(/^pxt_/.test(secret), `no token shown: ${secret}`);
      ensure(/Copy it now/.test(await page.textContent('#token-shown')), 'no "copy it now" note');
      await page.waitForSelector('tr.token[data-name="ci"]');
      const id = await page.getAttribute('tr.token[data-name="ci"]', 'data-token');
      ensure(secret.startsWith(`pxt_${id}_`), `the row's id ${id} is not the token's`);
      await shot('tokens');

      const me = await rest('GET', '/auth/me', { bearer: secret });
      ensure(me.status === 200, `the token is refused: ${me.status}`);
      const seen = await me.json();
      ensure(seen.via === `token:${id}` && JSON.stringify(seen.permissions) === '["groups:read"]',
        `the token is ${JSON.stringify(seen)}`);
      ensure((await rest('GET', '/groups', { bearer: secret })).status === 200, 'it cannot read groups');
      ensure((await rest('GET', '/nodes', { bearer: secret })).status === 403, 'it reads more than its scope');

      await page.reload();
      ensure(!(await page.content()).includes(secret), 'the token is shown again after a reload');
      // Everyone's tokens (users:read) list it too.
      await page.fill('#token-owner-form input[name=owner]', 'all');
      await page.click('#token-owner-form button[type=submit]');
      await page.waitForURL(`${A}/ui/tokens?owner=all`);
      page.once('dialog', (dialog) => dialog.accept());
      await page.click(`tr.token[data-token="${id}"] button.revoke`);
      await resultSays('#token-action-result .ok', `API token ${id} revoked`);
      await page.waitForSelector(`tr.token[data-token="${id}"]`, { state: 'detached' });
      await eventually('the revoked token is refused',
        async () => (await rest('GET', '/auth/me', { bearer: secret })).status === 401);
      noNewProblems(logged);
    }],
  ];
}
