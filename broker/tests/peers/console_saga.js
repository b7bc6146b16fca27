// Drives the saga orchestrator's web console in Debian's chromium with playwright-core and
// checks what the pages show: a completed order saga with three steps, a refused one whose
// compensations ran in reverse order, Retry on a saga held by a failed compensation, the list's
// filters and counts, and a definition's versions with their diff.
//
//   node console_saga.js API_ADDR COMPLETED_ID COMPENSATED_ID FAILED_ID SCREENSHOT_DIR
//
// Prints "saga console ok" and exits 0 when every check passed; otherwise exits 1 saying which.
"use strict";

const path = require("path");
const { check, drive } = require("./console_support");

const [apiAddr, completed, compensated, failed, shots] = process.argv.slice(2);
const base = `http://${apiAddr}/ui`;

drive(1000, "saga console ok", async (page) => {
  const stateIs = (s) => page.waitForFunction((s) => document.querySelector("h1 .badge")?.textContent === s, s);
  const timelineOf = async () => page.locator("#timeline li").evaluateAll((items) =>
    items.map((li) => li.dataset.step + ":" + li.dataset.phase + ":" + li.querySelector(".outcome").textContent));

  // The completed saga: three steps, each one action that succeeded.
  await page.goto(base + "#/saga/" + completed);
  await stateIs("completed");
  check((await page.locator("#steps tbody tr").count()) === 3, "three steps");
  const done = await timelineOf();
  check(JSON.stringify(done) === JSON.stringify(["order:action:succeeded", "charge:action:succeeded", "reserve:action:succeeded"]),
    "completed timeline " + JSON.stringify(done));
  check((await page.locator("#history").innerText()).includes("started"), "the journal is shown");

  // The refused saga: reserve failed, then charge and order compensated, in reverse order.
  await page.goto(base + "#/saga/" + compensated);
  await stateIs("compensated");
  const undone = (await timelineOf()).filter((t) => t.includes(":compensation:"));
  check(JSON.stringify(undone) === JSON.stringify(["charge:compensation:succeeded", "order:compensation:succeeded"]),
    "compensations in reverse order " + JSON.stringify(undone));
  check((await timelineOf()).includes("reserve:action:failed"), "the refused action is on the timeline");
  check((await page.locator("#compensation-reason").innerText()).length > 0, "why it compensated");
  if (shots) await page.screenshot({ path: path.join(shots, "console-saga.png"), fullPage: true });

  // The held saga says why and what Retry does; Retry (confirmed) lets it finish compensating.
  await page.goto(base + "#/saga/" + failed);
  await stateIs("failed");
  const why = await page.locator("#why").innerText();
  check(why.includes("Retry gives step charge"), "the failed saga says what retry would do: " + why);
  check(await page.locator("#abort").isDisabled(), "abort is off for a failed saga");
  await page.click("#retry");
  await page.click("#confirm-ok");
  await stateIs("compensated");
  const retried = (await timelineOf()).filter((t) => t.startsWith("charge:compensation"));
  check(JSON.stringify(retried) === JSON.stringify(["charge:compensation:failed", "charge:compensation:succeeded"]),
    "the retry's attempt is on the timeline " + JSON.stringify(retried));

  // The list: counts by state, a state filter, a search by idempotency key.
  await page.goto(base + "#/sagas");
  await page.waitForFunction(() => document.querySelector('#counts [data-state="compensated"] .n')?.textContent === "2");
  check((await page.locator('#counts [data-state="completed"] .n').innerText()) === "1", "one completed");
  await page.selectOption("#f-state", "compensated");
  await page.click("#apply");
  await page.waitForFunction(() => document.querySelectorAll("#saga-list tbody tr").length === 2);
  const states = await page.locator("#saga-list tbody tr").evaluateAll((rows) => rows.map((r) => r.cells[2].textContent));
  check(states.every((s) => s === "compensated"), "filtered by state: " + states);
  await page.selectOption("#f-state", "");
  await page.fill("#f-search", "order-ok");
  await page.click("#apply");
  await page.waitForFunction((id) => {
    const rows = document.querySelectorAll("#saga-list tbody tr");
    return rows.length === 1 && rows[0].cells[0].textContent === id;
  }, completed);

  // The definition: both versions, and the diff between them names the retry change.
  await page.goto(base + "#/definition/order");
  await page.locator("#versions").waitFor();
  const versions = await page.locator("#versions tbody tr").allInnerTexts();
  check(versions.length === 2 && versions[0].startsWith("v2") && versions[0].includes("order → charge → reserve"),
    "versions " + JSON.stringify(versions));
  const diff = await page.locator("#diff .added").allInnerTexts();
  check(diff.some((l) => l.includes('"max_attempts": 1')), "diff shows the change: " + JSON.stringify(diff));

  // A saga that does not exist is an error on the page.
  await page.goto(base + "#/saga/no-such-saga");
  await page.waitForFunction(() => document.querySelector("#error")?.textContent.startsWith("404"));
});
