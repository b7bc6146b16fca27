// Drives the broker's web console in Debian's chromium with playwright-core and checks what the
// pages show: a topic and its settings, a message with its key, headers and JSON value, a
// consumer group whose lag moves as records are produced and consumed, and an honest error.
//
//   node console_broker.js HTTP_ADDR NATIVE_ADDR STRAND_CLI SCREENSHOT_DIR
//
// Prints "console ok" and exits 0 when every check passed; otherwise exits 1 saying which.
"use strict";

const { execFileSync } = require("child_process");
const path = require("path");
const { check, drive } = require("./console_support");

const [httpAddr, nativeAddr, cli, shots] = process.argv.slice(2);
const base = `http://${httpAddr}/ui`;
const strand = (args, input) =>
  execFileSync(cli, ["--broker", nativeAddr, ...args], { input: input || "", timeout: 60000 });

drive(860, "console ok", async (page) => {
  // The topics list shows the topic with its record count.
  await page.goto(base);
  const row = page.locator("#topics tr", { hasText: "orders" });
  await row.waitFor();
  const cells = await row.locator("td").allInnerTexts();
  check(cells[0] === "orders" && cells[1] === "2" && cells[2] === "2", "topics row " + JSON.stringify(cells));

  // The topic page: settings, partitions, and the message browser.
  await row.locator("a").click();
  await page.locator("#partitions").waitFor();
  check((await page.locator("dl.kv").innerText()).includes("retention_ms"), "settings shown");
  const partitionRows = await page.locator("#partitions tbody tr").allInnerTexts();
  check(partitionRows.length === 2, "two partitions: " + partitionRows);
  await page.selectOption("#partition", "0");
  await page.click("#read");
  const first = page.locator("#records tbody tr").first();
  await first.waitFor();
  const record = await first.locator("td").allInnerTexts();
  check(record[0] === "0", "first offset: " + record);
  check(record[2] === "order-1", "key shown: " + record[2]);
  check(record[3].includes("source = checkout"), "header shown: " + record[3]);
  check(record[4].includes('"total": 12.5'), "value pretty-printed as JSON: " + record[4]);
  const texts = await page.locator("#records tbody tr").allInnerTexts();
  check(texts.length === 2, "both records of partition 0: " + texts.length);
  // Shown as text instead, the value is the bytes as sent.
  await page.selectOption("#format", "text");
  check((await first.locator("td").nth(4).innerText()).includes('{"id":1,"total":12.5}'), "value as text");
  await page.selectOption("#format", "json");
  if (shots) await page.screenshot({ path: path.join(shots, "console-topic.png"), fullPage: true });

  // From a time after every record: nothing, and the page says so.
  await page.selectOption("#from", "time");
  await page.fill("#time", "2999-01-01T00:00");
  await page.click("#read");
  await page.getByText("No records there.").waitFor();

  // A consumer group's lag moves as records arrive and are consumed.
  await page.goto(base + "#/groups");
  const groupRow = page.locator("#groups tr", { hasText: "billing" });
  await groupRow.waitFor();
  await groupRow.locator("a").click();
  const lag = page.locator("#total-lag");
  await page.waitForFunction(() => document.querySelector("#total-lag")?.textContent === "1");
  strand(["produce", "orders", "--partition", "0"], "late-1\nlate-2\nlate-3\n");
  await page.waitForFunction(() => document.querySelector("#total-lag")?.textContent === "4");
  strand(["consume", "orders", "--group", "billing", "--count", "4"]);
  await page.waitForFunction(() => document.querySelector("#total-lag")?.textContent === "0");
  check((await lag.innerText()) === "0", "lag back to 0");
  check((await page.locator("#offsets").innerText()).includes("orders"), "offsets table names the topic");

  // An unknown topic is an error on the page, not an empty one.
  await page.goto(base + "#/topic/no-such-topic");
  await page.waitForFunction(() => document.querySelector("#error")?.textContent.includes("unknown topic"));
});
