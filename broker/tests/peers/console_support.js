// What the console tests share: a check that fails with what was expected, and a run of one
// page in Debian's chromium (or $CHROMIUM) through playwright-core.
"use strict";

const { chromium } = require("playwright-core");

function check(condition, what) {
  if (!condition) throw new Error("check failed: " + what);
}

// Opens one page `height` pixels tall, runs `body(page)` on it, fails if the page raised a
// script error, and prints `okLine`; on any failure prints the stack and exits 1.
function drive(height, okLine, body) {
  (async () => {
    const browser = await chromium.launch({
      executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
      args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
      timeout: 60000,
    });
    try {
      const page = await browser.newPage({ viewport: { width: 1280, height } });
      page.setDefaultTimeout(20000);
      const scriptErrors = [];
      page.on("pageerror", (e) => scriptErrors.push(e.message));
      await body(page);
      check(scriptErrors.length === 0, "no script errors: " + scriptErrors);
      console.log(okLine);
    } finally {
      await browser.close();
    }
  })().catch((e) => {
    console.error(e.stack || String(e));
    process.exit(1);
  });
}

module.exports = { check, drive };
