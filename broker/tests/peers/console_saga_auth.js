// Drives the saga console in Debian's chromium (playwright-core) against an orchestrator whose
// API needs bearer JWTs, and checks the page is honest about it: without a token the list says
// a token is needed and shows no sagas; with a read-only token the list shows them and Abort is
// refused with the reason on the page; with a token that may operate, Abort and Retry work.
//
//   node console_saga_auth.js API_ADDR READ_TOKEN OPERATE_TOKEN RUNNING_ID FAILED_ID
//
// Prints "saga console auth ok" and exits 0 when every check passed; otherwise exits 1.
"use strict";

const { check, drive } = require("./console_support");

const [apiAddr, readToken, operateToken, running, failed] = process.argv.slice(2);
const base = `http://${apiAddr}/ui`;

drive(1000, "saga console auth ok", async (page) => {
  const stateIs = (s) => page.waitForFunction((s) => document.querySelector("h1 .badge")?.textContent === s, s);
  const useToken = async (token) => {
    await page.fill("#token", token);
    await page.click("#token-form button");
  };

  // No token: the page says a token is needed, and lists nothing.
  await page.goto(base + "#/sagas");
  await page.waitForFunction(() => document.querySelector("#error")?.textContent.startsWith("401"));
  const error = await page.locator("#error").innerText();
  check(error.includes("bearer token") && error.includes("Enter a bearer token above"), "no token: " + error);
  check((await page.locator("#saga-list").count()) === 0, "no saga listed without a token");
  await page.goto(base + "#/saga/" + running);
  await page.waitForFunction(() => document.querySelector("#error")?.textContent.startsWith("401"));
  check((await page.locator("#saga h1").count()) === 0, "no saga shown without a token");

  // A token that may read: the list and the saga show; Abort is refused, and the page says why.
  await page.goto(base + "#/sagas");
  await useToken(readToken);
  await page.waitForFunction((ids) => {
    const shown = [...document.querySelectorAll("#saga-list tbody tr")].map((r) => r.cells[0].textContent);
    return ids.every((id) => shown.includes(id));
  }, [running, failed]);
  check((await page.locator("#error").innerText()) === "", "no error with a token");
  await page.goto(base + "#/saga/" + running);
  await stateIs("running");
  await page.click("#abort");
  await page.click("#confirm-ok");
  await page.waitForFunction(() => document.querySelector("#refused")?.textContent.includes("403"));
  const refused = await page.locator("#refused").innerText();
  check(refused.includes("does not allow"), "read-only abort: " + refused);
  check((await page.locator("h1 .badge").innerText()) === "running", "still running");

  // A token that may operate: Abort compensates the running saga; Retry finishes the held one.
  await useToken(operateToken);
  await stateIs("running");
  check((await page.locator("#refused").count()) === 0, "a new token starts afresh");
  await page.click("#abort");
  await page.click("#confirm-ok");
  await stateIs("compensated");
  check((await page.locator("#compensation-reason").innerText()).length > 0, "why it compensated");
  await page.goto(base + "#/saga/" + failed);
  await stateIs("failed");
  await page.click("#retry");
  await page.click("#confirm-ok");
  await stateIs("compensated");
});
