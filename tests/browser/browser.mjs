// Debian's Chromium driven by playwright-core: never a downloaded browser. The flags keep it off
// the network (this machine has none): without them Chromium waits on connections of its own.

import { mkdtempSync, rmSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

export const CHROMIUM = '/usr/bin/chromium';

const FLAGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

/// A browser context with a fresh profile; `close()` ends the browser and removes the profile.
export async function launch() {
  if (!existsSync(CHROMIUM)) {
    throw new Error(`no Chromium at ${CHROMIUM}: install Debian's chromium (compose/dev install_browser)`);
  }
  const profile = mkdtempSync(join(tmpdir(), 'prexor-chromium-'));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: FLAGS,
    viewport: { width: 1280, height: 900 },
    timeout: 60_000,
  });
  context.setDefaultTimeout(20_000);
  return {
    context,
    async close() {
      await context.close();
      rmSync(profile, { recursive: true, force: true });
    },
  };
}

/// Runs each named check in order, the rest after a failure too; prints one JSON line with the
/// results and exits non-zero if any failed.
export async function run(checks, { onFailure } = {}) {
  const passed = [];
  const failed = [];
  for (const [name, check] of checks) {
    try {
      await check();
      passed.push(name);
    } catch (err) {
      failed.push({ name, error: String(err?.stack || err) });
      if (onFailure) await onFailure(name).catch(() => {});
    }
  }
  console.log(JSON.stringify({ passed, failed }));
  return failed.length === 0;
}

export function ensure(condition, message) {
  if (!condition) throw new Error(message);
}
