// Browser checks of the dashboard, run by crates/cli/tests/dashboard_e2e.rs with:
//   HOPPER_URL         a server with app "d" deployed, a failed d.fail call and a running d.slow call
//   HOPPER_LOCKED_URL  a server that requires HOPPER_TOKEN
//   FAILED_ID, FAILED_CODE, SLOW_ID, MAP_ID (a 5-input map of d.ok), BIG_MAP_ID (120 inputs),
//   FAILED_MAP_ID (a 2-input map of d.fail), HELD_ID (a d.slow call its max_running holds
//   back), BLOB_ID (a call whose input is 2,100,000 bytes stored as a blob), OUT_DIR
//   (screenshots)
// Exits non-zero, naming the step, at the first check that fails.
import { chromium } from "playwright-core";
import path from "node:path";

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
};
const url = env("HOPPER_URL");
const lockedUrl = env("HOPPER_LOCKED_URL");
const token = env("HOPPER_TOKEN");
const failedId = env("FAILED_ID");
const failedCode = env("FAILED_CODE");
const slowId = env("SLOW_ID");
const mapId = env("MAP_ID");
const bigMapId = env("BIG_MAP_ID");
const failedMapId = env("FAILED_MAP_ID");
const heldId = env("HELD_ID");
const blobId = env("BLOB_ID");
const outDir = env("OUT_DIR");

const browser = await chromium.launch({
  executablePath: "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
    "--disable-background-networking", "--no-first-run"],
});
let step = "start";
const errors = [];

async function check(name, fn) {
  step = name;
  const started = Date.now();
  await fn();
  console.log(`ok   ${name} (${Date.now() - started} ms)`);
}

function assert(condition, message) {
  if (!condition) throw new Error(message);
}

async function shot(page, name) {
  await page.screenshot({ path: path.join(outDir, `${name}.png`), fullPage: true });
}

try {
  const context = await browser.newContext({ viewport: { width: 1366, height: 820 } });
  const page = await context.newPage();
  page.setDefaultTimeout(15000);
  page.on("pageerror", (e) => errors.push(`page error: ${e.message}`));
  page.on("console", (m) => { if (m.type() === "error") errors.push(`console: ${m.text()}`); });

  await check("the overview shows charts of rates, queue depth and durations", async () => {
    await page.goto(url + "/");
    await page.getByRole("heading", { name: "Overview" }).waitFor();
    await page.getByText("Inputs ended per second").waitFor();
    await page.locator("svg.chart polyline").first().waitFor();
    await page.getByText("Queue depth by function").waitFor();
    await page.getByRole("link", { name: "d.slow" }).first().waitFor();
    const tiles = await page.locator(".tile").allInnerTexts();
    assert(tiles.some((t) => /WORKER/i.test(t)), `no worker tile in ${tiles}`);
    // The slow call is running, and a second waits on d.slow's max_running.
    await page.getByText("1 running · 1 queued").first().waitFor();
    await shot(page, "overview");
  });

  await check("the functions page lists each function's policy and numbers", async () => {
    await page.getByRole("link", { name: "Functions", exact: true }).click();
    await page.getByRole("heading", { name: "Functions" }).waitFor();
    const row = page.locator("tr", { has: page.getByRole("link", { name: "d.ok" }) });
    await row.waitFor();
    const text = await row.innerText();
    assert(/100%/.test(text), `d.ok should show a 100% success rate: ${text}`);
    // Functions are grouped by app, and nothing stray is printed under the table.
    await page.locator("tr.app", { hasText: /^d · \d+ functions$/ }).waitFor();
    const panel = await page.locator("#view .panel").innerText();
    assert(!/\bnull\b/.test(panel), `no stray null: ${panel}`);
    await shot(page, "functions");
    await page.getByRole("link", { name: "d.fail" }).click();
    await page.getByRole("heading", { name: /d\.fail/ }).waitFor();
    await page.getByText("Policy").waitFor();
    await page.locator(`tr[data-call="${failedId}"]`).waitFor();
    const versions = page.locator("#versions tbody tr");
    await versions.nth(1).waitFor();
    assert((await versions.count()) === 2, "d.fail has two versions");
    const changed = await page.locator("#versions tbody tr").first().locator("td.changed:not(.code)").allInnerTexts();
    assert(changed.join() === "45s", `version 2 changed the timeout only: ${changed}`);
    // Version 1 came from serve --deploy, with its folder as a snapshot; version 2 through
    // the API without one.
    const code = await versions.locator("td.code").allInnerTexts();
    assert(/^live folder /.test(code[0]) && /^[0-9a-f]{12} · (1 file|\d+ files) · /.test(code[1]), `the versions' code: ${code}`);
    await shot(page, "function");
  });

  await check("a failed call is found through the calls filter", async () => {
    await page.getByRole("link", { name: "Calls", exact: true }).click();
    await page.getByRole("heading", { name: "Calls" }).waitFor();
    await page.locator("select[name=function] option[value='d.fail']").waitFor({ state: "attached" });
    await page.selectOption("select[name=app]", "d");
    await page.selectOption("select[name=since]", "15m");
    await page.selectOption("select[name=function]", "d.fail");
    await page.selectOption("select[name=state]", "failed");
    await page.getByRole("button", { name: "Filter" }).click();
    await page.waitForURL(/state=failed/);
    const rows = page.locator("#calls tbody tr");
    await page.locator(`tr[data-call="${failedId}"]`).waitFor();
    await page.locator(`tr[data-call="${failedMapId}"]`).waitFor();
    assert((await rows.count()) === 2, `the filter should leave the failed call and map, not ${await rows.count()}`);
    // The other filters narrow it to nothing.
    await page.selectOption("select[name=origin]", "schedule");
    await page.getByRole("button", { name: "Filter" }).click();
    await page.getByText("No calls match.").waitFor();
    await page.selectOption("select[name=origin]", "");
    await page.getByRole("button", { name: "Filter" }).click();
    await page.locator(`tr[data-call="${failedId}"]`).waitFor();
    await shot(page, "calls");
  });

  await check("the failed call shows its error and its log lines", async () => {
    await page.getByRole("link", { name: failedId }).click();
    await page.waitForURL(`**/calls/${failedId}`);
    const error = page.locator("#error");
    await error.waitFor();
    assert((await error.innerText()).includes(failedCode), `the error should name ${failedCode}`);
    await page.locator("#logs").getByText("starting the import").waitFor();
    await page.locator("#logs .stderr").getByText("the database said no").waitFor();
    await page.locator("pre[data-json=input]").getByText('"orders"').waitFor();
    await shot(page, "call-failed");
  });

  await check("bytes show as their size and a download link, never their content", async () => {
    await page.goto(`${url}/calls/${blobId}`);
    const shown = page.locator("[data-blob=input]");
    await shown.getByText("bytes, 2.1 MB").waitFor();
    assert((await page.locator("pre[data-json=input]").count()) === 0, "no JSON of the bytes");
    const href = await shown.getByRole("link", { name: "download" }).getAttribute("href");
    const size = await page.evaluate(async (h) => (await (await fetch(h)).arrayBuffer()).byteLength, href);
    assert(size === 2100000, `the download holds the bytes: ${size}`);
  });

  await check("a map shows its progress and any input by index", async () => {
    await page.goto(`${url}/calls/${mapId}`);
    await page.locator(".bar[role=progressbar]").waitFor();
    await page.getByText("Inputs: 5 of 5 ended").waitFor();
    // (Under load a page refresh can land between the fill and the click, and the click is
    // lost: it is tried again, at most three times. A refresh racing the form needs a look.)
    for (let tries = 1; ; tries++) {
      await page.fill("input[name=index]", "3");
      await page.getByRole("button", { name: "Show input" }).click();
      try {
        await page.getByRole("heading", { name: /Input 3/ }).waitFor({ timeout: 5000 });
        break;
      } catch (e) {
        if (tries === 3) throw e;
      }
    }
    await page.locator("pre[data-json=input]").getByText('"item": 3').waitFor();
    // The logs follow the input inspected.
    await page.getByRole("heading", { name: "Logs of input 3" }).waitFor();
    await page.locator("#logs").getByText('{"item":3}').waitFor();
    const logLines = await page.locator("#logs div").allInnerTexts();
    assert(logLines.every((l) => l.includes("[3#")), `only input 3's lines: ${logLines}`);
    assert((await page.getByRole("button", { name: "Re-run" }).count()) === 0, "a map has no re-run button");
    // Each attempt says the size of the batch it ran in (d.ok is not batched: 1).
    await page.getByRole("columnheader", { name: "Batch" }).waitFor();
    // (An attempt a stopping worker handed back ran in no batch: only those that ran count.)
    const rows = await page.locator("#attempts tbody tr").evaluateAll((trs) =>
      trs.map((tr) => [tr.children[2].innerText, tr.children[4].innerText]));
    const ran = rows.filter(([outcome]) => outcome !== "lost");
    assert(ran.length === 5 && ran.every(([, batch]) => batch === "1"), `attempts (outcome, batch): ${rows}`);
    await shot(page, "call-map");
  });

  await check("a big map's attempts come a page at a time", async () => {
    await page.goto(`${url}/calls/${bigMapId}`);
    const rows = page.locator("#attempts tbody tr");
    await page.getByRole("heading", { name: /^Attempts of inputs 0 to 4\d$/ }).waitFor();
    assert((await rows.count()) <= 50, `a page of at most 50 attempts, not ${await rows.count()}`);
    await page.getByRole("button", { name: "Next" }).click();
    await page.getByRole("heading", { name: /^Attempts of inputs 4\d to 9\d$/ }).waitFor();
    await page.getByRole("button", { name: "Next" }).click();
    await page.getByRole("heading", { name: /^Attempts of inputs \d+ to 119$/ }).waitFor();
    assert(await page.getByRole("button", { name: "Next" }).isDisabled(), "the last page has no next");
    await page.getByRole("button", { name: "Previous" }).click();
    await page.getByRole("heading", { name: /^Attempts of inputs 4\d to 9\d$/ }).waitFor();
    const text = await page.locator("#view").innerText();
    assert(!/\bnull\b/.test(text), `no stray null: ${text.slice(0, 200)}`);
  });

  await check("searching by id opens the call", async () => {
    await page.goto(url + "/calls");
    await page.fill("input[name=id]", failedId);
    await page.keyboard.press("Enter");
    await page.waitForURL(`**/calls/${failedId}`);
    await page.locator("#error").waitFor();
  });

  await check("a call a limit holds back says why, and its function's page shows the limits now", async () => {
    await page.goto(`${url}/calls/${heldId}`);
    await page.locator("#waiting").waitFor();
    const why = await page.locator("#waiting").innerText();
    assert(why === "max_running: 1 of 1 running", `the held call's wait: ${why}`);
    const place = [await page.locator("#key").innerText(), await page.locator("#priority").innerText()];
    assert(place.join() === "acme,7", `the held call's key and priority: ${place}`);
    await page.goto(`${url}/functions/d.slow`);
    await page.getByRole("heading", { name: "Limits now: 1 running" }).waitFor();
    const listed = await page.locator(`tr[data-call="${heldId}"]`).innerText();
    assert(listed.includes("d.slow (key acme, priority 7)"), `the recent calls list: ${listed}`);
    const held = await page.locator("#holds tbody tr").allInnerTexts();
    assert(held.length === 1 && /^1\s+max_running: 1 of 1 running\s+when one ends$/.test(held[0]),
      `the function's held-back inputs: ${held}`);
    await shot(page, "limits");
  });

  await check("a running call's log grows live and the cancel button ends it", async () => {
    await page.goto(`${url}/calls/${slowId}`);
    await page.locator("#state .s-running").waitFor();
    const lines = page.locator("#logs div");
    await lines.first().waitFor();
    const before = await lines.count();
    await page.evaluate(() => { window.__sameDocument = true; });
    await page.waitForFunction((n) => document.querySelectorAll("#logs div").length >= n + 2, before);
    await shot(page, "call-running");
    await page.getByRole("button", { name: "Cancel" }).click();
    await page.locator("#state .s-cancelled").waitFor();
    assert(await page.evaluate(() => window.__sameDocument === true), "the page reloaded");
    assert((await page.getByRole("button", { name: "Cancel" }).count()) === 0, "an ended call has no cancel button");
    await shot(page, "call-cancelled");
  });

  await check("re-run spawns a new call with the same input", async () => {
    await page.goto(`${url}/calls/${failedId}`);
    await page.getByRole("button", { name: "Re-run" }).click();
    await page.waitForURL((u) => /\/calls\/hc-/.test(u.pathname) && !u.pathname.endsWith(failedId));
    await page.locator("pre[data-json=input]").getByText('"orders"').waitFor();
    // It names the call it re-runs, and that call lists it.
    await page.locator("#rerun-of").getByRole("link", { name: failedId }).click();
    await page.locator("#reruns a").first().waitFor();
  });

  await check("failed inputs are listed across calls, a map's too, and a selection re-runs", async () => {
    await page.getByRole("link", { name: "Failed", exact: true }).click();
    await page.getByRole("heading", { name: "Failed inputs" }).waitFor();
    const row = (call, index) => page.locator(`#failed tr[data-input="${call}/${index}"]`);
    await row(failedMapId, 1).waitFor();
    await row(failedId, 0).waitFor();
    // The failed call re-run above shows its re-run.
    await row(failedId, 0).locator("a", { hasText: "hc-" }).nth(1).waitFor();
    assert((await row(failedMapId, 1).innerText()).includes(failedCode), "the error's code is shown");
    await row(failedMapId, 1).getByRole("checkbox").check();
    await page.getByRole("button", { name: "Re-run selected" }).click();
    await page.locator("#rerun-status").getByText("Re-ran 1 input").waitFor();
    await row(failedMapId, 1).locator("a", { hasText: "hc-" }).nth(1).waitFor();
    await shot(page, "failed-inputs");
    // A map's failed count leads to its failed inputs; its first failed input is one click.
    await page.goto(`${url}/calls/${failedMapId}`);
    await page.getByRole("link", { name: "input 0" }).click();
    await page.getByRole("heading", { name: /Input 0/ }).waitFor();
    await page.getByRole("link", { name: "failed 2" }).click();
    await page.waitForURL(`**/failed?call=${failedMapId}`);
    await page.getByRole("heading", { name: `Failed inputs of ${failedMapId}` }).waitFor();
    await row(failedMapId, 0).waitFor();
    assert((await page.locator("#failed tbody tr").count()) === 2, "only the map's two inputs");
    // An input's link opens the map's page on that input.
    await row(failedMapId, 1).getByRole("link", { name: "1", exact: true }).click();
    await page.getByRole("heading", { name: /Input 1/ }).waitFor();
  });

  await check("workers and schedules show", async () => {
    await page.getByRole("link", { name: "Workers", exact: true }).click();
    await page.getByRole("heading", { name: "Workers" }).waitFor();
    await page.locator("td", { hasText: "d.slow" }).first().waitFor();
    await shot(page, "workers");
    await page.getByRole("link", { name: "Schedules", exact: true }).click();
    await page.locator("[data-schedule='d.hourly']").waitFor();
    await page.getByRole("button", { name: "Pause" }).click();
    await page.locator("[data-schedule='d.hourly'] .s-paused").waitFor();
    await page.getByRole("button", { name: "Resume" }).click();
    await page.getByRole("button", { name: "Pause" }).waitFor();
    await page.getByRole("button", { name: "Run now" }).click();
    await page.getByRole("button", { name: "Show history" }).click();
    await page.locator("[data-schedule='d.hourly'] .s-triggered").waitFor();
    await shot(page, "schedules");
  });

  await check("the overview shows the failure notification channel and its trouble", async () => {
    await page.goto(url + "/");
    // The webhook points at a closed port: the failed call's message is being retried.
    const row = page.locator("#channels tr[data-channel*='127.0.0.1']");
    await row.waitFor();
    await row.locator(".s-retrying, .s-failing").waitFor();
    await shot(page, "overview-notifications");
  });

  await check("controls are reachable from the keyboard", async () => {
    await page.goto(url + "/calls");
    await page.getByRole("heading", { name: "Calls" }).waitFor();
    const reached = new Set();
    for (let i = 0; i < 25; i++) {
      await page.keyboard.press("Tab");
      reached.add(await page.evaluate(() => {
        const el = document.activeElement;
        return el ? `${el.tagName}:${el.getAttribute("name") || el.textContent.trim()}` : "";
      }));
    }
    for (const want of ["A:Calls", "INPUT:id", "SELECT:state", "BUTTON:Filter"]) {
      assert(reached.has(want), `Tab never reached ${want}: ${[...reached]}`);
    }
  });

  await check("the dark theme follows the system", async () => {
    const dark = await browser.newContext({ viewport: { width: 1366, height: 820 }, colorScheme: "dark" });
    const p = await dark.newPage();
    await p.goto(url + "/");
    await p.locator("svg.chart polyline").first().waitFor();
    const [bg, lightBg] = [
      await p.evaluate(() => getComputedStyle(document.body).backgroundColor),
      await page.evaluate(() => getComputedStyle(document.body).backgroundColor),
    ];
    assert(bg !== lightBg, `the dark and light backgrounds are both ${bg}`);
    await shot(p, "overview-dark");
    await dark.close();
  });

  await check("a token-protected server shows nothing before the token is entered", async () => {
    const locked = await browser.newContext({ viewport: { width: 1366, height: 820 } });
    const p = await locked.newPage();
    p.setDefaultTimeout(15000);
    await p.goto(lockedUrl + "/calls");
    await p.getByRole("heading", { name: "Sign in" }).waitFor();
    assert(!(await p.locator("#nav").isVisible()), "the navigation shows before signing in");
    assert((await p.locator("table").count()) === 0, "data shows before signing in");
    const status = await p.evaluate(async () => (await fetch("/v1/calls")).status);
    assert(status === 401, `the API answered ${status} without the token`);
    await shot(p, "signin");
    await p.fill("input[name=token]", "wrong");
    await p.getByRole("button", { name: "Sign in" }).click();
    await p.getByText("That token is not valid.").waitFor();
    await p.fill("input[name=token]", token);
    await p.getByRole("button", { name: "Sign in" }).click();
    await p.getByRole("heading", { name: "Calls" }).waitFor();
    assert(await p.locator("#nav").isVisible(), "the navigation shows after signing in");
    // The cookie keeps the session across a reload.
    await p.reload();
    await p.getByRole("heading", { name: "Calls" }).waitFor();
    const cookies = await locked.cookies();
    const cookie = cookies.find((c) => c.name === "hopper_token");
    assert(cookie && cookie.httpOnly && cookie.sameSite === "Strict", `cookie: ${JSON.stringify(cookies)}`);
    // A change signed in by the cookie alone, without the dashboard's header, is refused.
    const forged = await p.evaluate(async () => (await fetch("/v1/schedules/x/trigger", { method: "POST" })).status);
    assert(forged === 403, `a cookie-only POST answered ${forged}`);
    await locked.close();
  });

  const real = errors.filter((e) => !/EventSource|ERR_INCOMPLETE_CHUNKED_ENCODING|net::ERR_ABORTED/.test(e));
  assert(real.length === 0, `the page logged errors:\n${real.join("\n")}`);
  console.log(`screenshots in ${outDir}`);
} catch (err) {
  console.error(`FAILED at "${step}": ${err.stack || err}`);
  process.exitCode = 1;
} finally {
  await browser.close();
}
