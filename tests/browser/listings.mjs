// Walks the dashboard's listings in headless Chromium: pages through a
// long list of nodes, opens a node whose DID carries markup, reads a
// customer whose name has quotes, and a month's statement; prints what it
// saw as one JSON line for tests/tests/dashboard_browser.rs to judge.
//
// usage: node listings.mjs <tracker URL ending in /> <user> <password> <month> <hostile node DID> <screenshot dir>
// CHROMIUM: the browser binary (default /usr/bin/chromium, Debian's).

import { chromium } from 'playwright-core'

const [url, user, password, month, hostile, shots] = process.argv.slice(2)
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox']
})
const seen = { dialogs: 0 }
try {
  const page = await browser.newPage({ viewport: { width: 1100, height: 700 } })
  // Markup run as script would open a dialog: count any.
  page.on('dialog', async (dialog) => {
    seen.dialogs += 1
    await dialog.dismiss()
  })
  const text = async (selector) => (await page.textContent(selector))?.trim()
  const injected = () => page.$$eval('main img, main script, main b, main i', (els) => els.length)

  await page.goto(`${url}admin/login`)
  await page.fill('#user', user)
  await page.fill('#password', password)
  await Promise.all([page.waitForNavigation(), page.click('#login')])
  seen.logout_everywhere = (await page.$('#logout-everywhere')) !== null

  // Nodes, page after page: every node once.
  await page.goto(`${url}admin/nodes`)
  const nodes = []
  for (;;) {
    nodes.push(...(await page.$$eval('#nodes-table tr td:first-child', (cells) => cells.map((c) => c.textContent))))
    const next = await page.$('#next')
    if (!next) break
    await Promise.all([page.waitForNavigation(), next.click()])
  }
  seen.nodes = nodes
  seen.nodes_injected = await injected()

  // The node whose DID carries markup: its link leads to its own page.
  await page.goto(`${url}admin/nodes`)
  for (;;) {
    const [href] = await page.$$eval(
      '#nodes-table a',
      (links, want) => links.filter((l) => l.textContent === want).map((l) => l.getAttribute('href')),
      hostile
    )
    if (href) {
      seen.hostile_href = href
      await Promise.all([page.waitForNavigation(), page.click(`#nodes-table a[href="${href}"]`)])
      break
    }
    const next = await page.$('#next')
    if (!next) break
    await Promise.all([page.waitForNavigation(), next.click()])
  }
  seen.hostile_page_title = await text('main h1')
  seen.hostile_total = await text('#node-total')
  seen.hostile_injected = await injected()
  await page.screenshot({ path: `${shots}/hostile-node.png`, fullPage: true })

  // Spaces: a customer whose name has quotes and markup, shown as text.
  await page.goto(`${url}admin/usage`)
  seen.customers = await page.$$eval('#spaces-table tr td:nth-child(2)', (cells) => cells.map((c) => c.textContent))
  seen.spaces_injected = await injected()

  // A failed batch: from the overview's count to its node and error.
  await page.goto(`${url}admin`)
  await Promise.all([page.waitForNavigation(), page.click('#failed-link')])
  seen.failed_rows = await page.$$eval('#failed-batches tr', (rows) =>
    rows.slice(1).map((r) => Array.from(r.querySelectorAll('td')).map((c) => c.textContent))
  )
  seen.failed_injected = await injected()
  await page.screenshot({ path: `${shots}/failed.png`, fullPage: true })

  // This month's statement, from the navigation.
  await Promise.all([page.waitForNavigation(), page.click('#nav-statements')])
  seen.statement_url = page.url()
  seen.statement_title = await text('main h1')
  seen.statement_final = await text('#final')
  seen.statement_nodes = await page.$$eval('#statement-nodes tr', (rows) => rows.length - 1)
  seen.statement_customers = await page.$$eval('#statement-customers tr td:first-child', (cells) => cells.map((c) => c.textContent))
  seen.statement_injected = await injected()
  await page.screenshot({ path: `${shots}/statement.png`, fullPage: true })

  // Log out everywhere: this session ends too.
  await Promise.all([page.waitForNavigation(), page.click('#logout-everywhere')])
  await page.goto(`${url}admin`)
  seen.after_logout_url = page.url()
} finally {
  await browser.close()
}
console.log(JSON.stringify(seen))
