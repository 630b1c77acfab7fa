// Walks the dashboard in headless Chromium as an operator would, and prints
// what it saw as one JSON line; tests/tests/dashboard_browser.rs judges it.
//
// usage: node dashboard.mjs <tracker URL ending in /> <user> <password> <screenshot dir>
// CHROMIUM: the browser binary (default /usr/bin/chromium, Debian's).

import { chromium } from 'playwright-core'

const [url, user, password, shots] = process.argv.slice(2)
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  // As root (CI) Chromium's sandbox cannot start.
  args: ['--no-sandbox']
})
const seen = {}
try {
  const page = await browser.newPage({ viewport: { width: 1100, height: 700 } })
  const text = async (selector) => (await page.textContent(selector))?.trim()

  // Not logged in: the dashboard sends the browser to the login.
  await page.goto(`${url}admin`)
  seen.unauthenticated_url = page.url()

  // A wrong password is refused, with a message.
  await page.fill('#user', user)
  await page.fill('#password', `${password}-wrong`)
  let [response] = await Promise.all([page.waitForNavigation(), page.click('#login')])
  seen.wrong_status = response.status()
  seen.wrong_message = await text('#login-error')
  await page.screenshot({ path: `${shots}/login-refused.png` })

  // The right one opens the overview.
  await page.fill('#user', user)
  await page.fill('#password', password)
  ;[response] = await Promise.all([page.waitForNavigation(), page.click('#login')])
  seen.login_url = page.url()
  seen.egress_bytes = await text('#egress-bytes')
  seen.concluded = await text('#concluded')
  seen.failed = await text('#failed')
  seen.nodes = await text('#nodes')
  seen.rejected_duplicates = await text('#rejected-DuplicateReceipt')
  const bars = await page.$$eval('#egress-chart rect', (rects) => rects.map((r) => Number(r.dataset.value)))
  seen.chart_bars = bars.length
  seen.chart_sum = bars.reduce((a, b) => a + b, 0)
  await page.screenshot({ path: `${shots}/overview.png`, fullPage: true })

  // Nodes: the list, its CSV, the node's page, a batch's receipt.
  await Promise.all([page.waitForNavigation(), page.click('#nav-nodes')])
  seen.node_rows = await page.$$eval('#nodes-table tr', (rows) => rows.length - 1)
  await page.screenshot({ path: `${shots}/nodes.png`, fullPage: true })
  let [download] = await Promise.all([page.waitForEvent('download'), page.click('#csv')])
  await download.saveAs(`${shots}/nodes.csv`)
  await Promise.all([page.waitForNavigation(), page.click('#nodes-table a')])
  seen.node_total = await text('#node-total')
  seen.node_payout = await text('#node-payout')
  seen.node_batch_states = await page.$$eval('#batches tr td:nth-child(3)', (cells) => cells.map((c) => c.textContent))
  await page.screenshot({ path: `${shots}/node.png`, fullPage: true })
  seen.receipt_href = await page.getAttribute('#batches a.receipt', 'href')
  ;[download] = await Promise.all([page.waitForEvent('download'), page.click('#batches a.receipt')])
  await download.saveAs(`${shots}/receipt.car`)

  // Spaces and customers, and their CSV.
  await Promise.all([page.waitForNavigation(), page.click('#nav-spaces')])
  seen.space_cells = await page.$$eval('#spaces-table tr:nth-child(2) td', (cells) => cells.map((c) => c.textContent))
  await page.screenshot({ path: `${shots}/spaces.png`, fullPage: true })
  ;[download] = await Promise.all([page.waitForEvent('download'), page.click('#csv')])
  await download.saveAs(`${shots}/spaces.csv`)
  // One customer's bill: the Customer field.
  await page.fill('#customer', seen.space_cells[1])
  await Promise.all([page.waitForNavigation(), page.click('#search')])
  seen.customer_total = await text('#customer-total')
  await page.screenshot({ path: `${shots}/customer.png`, fullPage: true })

  // Logging out ends the session: the dashboard asks for the login again.
  await Promise.all([page.waitForNavigation(), page.click('#logout')])
  seen.logout_url = page.url()
  await page.goto(`${url}admin`)
  seen.after_logout_url = page.url()
} finally {
  await browser.close()
}
console.log(JSON.stringify(seen))
