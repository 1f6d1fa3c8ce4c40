// The delivery-log UI in Debian's headless Chromium, driven by playwright-core. Started by
// tests/api/browser.rs, which prepares the server and its data and passes them in UI_* env
// variables. Any failed check exits non-zero; every page is saved as a PNG in UI_SCREENSHOTS.
import { chromium } from 'playwright-core';

const env = process.env;
const base = env.UI_BASE_URL;
const dir = env.UI_SCREENSHOTS;
const delivery = env.UI_DELIVERY_ID;
const endpoint = env.UI_ENDPOINT_ID;
const user = env.UI_USER_ID;
const XSS = '<script>alert(1)</script>';

function check(ok, what) {
  if (!ok) throw new Error(`check failed: ${what}`);
}

const browser = await chromium.launch({
  executablePath: env.UI_CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox'],
});
let dialogs = 0;
async function open(viewport = { width: 1280, height: 860 }) {
  const context = await browser.newContext({ viewport });
  const page = await context.newPage();
  page.on('dialog', (d) => { dialogs += 1; d.dismiss(); });
  return page;
}
const shot = (page, name) => page.screenshot({ path: `${dir}/${name}.png`, fullPage: true });

try {
  // Sign in, see a failing delivery, open it, press retry, see the new attempt.
  const page = await open();
  await page.goto(`${base}/ui/deliveries`);
  check(page.url() === `${base}/ui/sign-in`, 'without a session the UI asks to sign in');
  await shot(page, '01-sign-in');
  await page.getByLabel('Organization API key').fill(env.UI_API_KEY);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.waitForURL(`${base}/ui/`);
  await page.getByText('Ended this hour', { exact: false }).waitFor();
  await shot(page, '02-overview');

  await page.getByRole('navigation').getByRole('link', { name: 'Deliveries' }).click();
  await page.selectOption('#status', 'failed');
  await page.getByRole('button', { name: 'Filter' }).click();
  await page.waitForURL(/status=failed/);
  check(await page.getByRole('link', { name: delivery }).count() === 1, 'the failing delivery is listed');
  await shot(page, '03-deliveries-failed');

  await page.getByRole('link', { name: delivery }).click();
  await page.waitForURL(`${base}/ui/deliveries/${delivery}`);
  const before = await page.locator('.attempt').count();
  check(before >= 1, 'its attempts are shown');
  check(await page.getByText('an error on the receiving server').count() >= 1, 'the status is explained');
  for (const s of await page.locator('details summary').all()) await s.click();
  check(await page.getByText(XSS).count() >= 1, 'an HTML response body shows as text');
  await shot(page, '04-delivery');

  await page.getByRole('button', { name: 'Retry now' }).click();
  await page.getByText('Retry queued').waitFor();
  let after = before;
  for (let i = 0; i < 100 && after <= before; i += 1) {
    await page.waitForTimeout(100);
    await page.reload();
    after = await page.locator('.attempt').count();
  }
  check(after === before + 1, `the manual attempt appears (${before} -> ${after})`);
  check(await page.getByText('· manual').count() === 1, 'it is marked manual');
  await shot(page, '05-delivery-retried');

  await page.goto(`${base}/ui/endpoints`);
  check(await page.getByText('at most 20 per second').count() === 1, 'the rate limit is listed');
  await shot(page, '06-endpoints');
  // The endpoint's last error leads to the delivery that failed.
  await page.getByRole('link', { name: 'HTTP 500 Internal Server Error' }).click();
  await page.waitForURL(new RegExp(`${base}/ui/deliveries/dlv_`));
  check(await page.getByText('an error on the receiving server').count() >= 1, 'a failed delivery');
  await page.goto(`${base}/ui/endpoints/${endpoint}`);
  check(await page.getByRole('button', { name: 'Disable' }).count() === 1, 'endpoint actions');
  check(await page.getByLabel('Rate limit', { exact: false }).inputValue() === '20', 'the form holds the rate limit');
  await shot(page, '07-endpoint');
  await page.goto(`${base}/ui/endpoints/new`);
  await page.getByLabel('URL').fill('ftp://example.com/');
  await page.getByRole('button', { name: 'Create' }).click();
  check(await page.getByText('Please correct the following').count() === 1, 'the API validation message');
  await shot(page, '08-endpoint-invalid');
  await page.goto(`${base}/ui/events`);
  await shot(page, '09-events');
  await page.goto(`${base}/ui/users`);
  check(await page.getByText(XSS).count() >= 1, 'a script as a user name shows as text');
  await shot(page, '10-users');
  await page.goto(`${base}/ui/users/${user}`);
  await shot(page, '11-user');

  const narrow = await open({ width: 390, height: 844 });
  await narrow.context().addCookies(await page.context().cookies());
  await narrow.goto(`${base}/ui/deliveries`);
  await shot(narrow, '12-deliveries-narrow');

  // A read-only portal link: "Continue" signs in once; no action is offered or accepted.
  const portal = await open();
  const res = await portal.goto(`${base}${env.UI_PORTAL_PATH}`);
  check(res.status() === 200, 'the portal link opens');
  await shot(portal, '13-portal-continue');
  await portal.getByRole('button', { name: 'Continue' }).click();
  await portal.waitForURL(`${base}/ui/`);
  await portal.goto(`${base}/ui/deliveries/${delivery}`);
  check(await portal.getByRole('button', { name: 'Retry now' }).count() === 0, 'read-only: no retry button');
  await shot(portal, '14-portal-delivery-read-only');
  const csrf = await portal.locator('input[name=csrf]').first().inputValue();
  const refused = await portal.request.post(`${base}/ui/deliveries/${delivery}/retry`, {
    form: { csrf }, maxRedirects: 0,
  });
  check(refused.status() === 403, `read-only: the server refuses a retry (${refused.status()})`);

  const again = await open();
  const second = await again.goto(`${base}${env.UI_PORTAL_PATH}`);
  check(second.status() === 410, 'the same link is refused the second time');
  check(await again.getByText('This link cannot be used').count() === 1, 'and says so');
  await shot(again, '15-portal-used');

  check(dialogs === 0, 'no script ran (no dialog opened)');
  console.log('browser flows passed');
} finally {
  await browser.close();
}
