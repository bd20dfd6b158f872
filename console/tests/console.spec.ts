// The console in a real browser against `sipmba server --dev`: signing in through sso's login
// page, the demo thing live, its plot growing, a command reaching ACKED, a rule firing, a thing
// created with its secret shown once, rotated and disabled, a channel sharing it, a user disabled
// after the dialog says what goes with it, a child user who sees none of the parent's things, the
// access token renewed, signing out. Every page is checked with axe-core
// (no serious or critical violation) and at 375 px width, and photographed.

import { mkdirSync, writeFileSync } from "node:fs";
import AxeBuilder from "@axe-core/playwright";
import { expect, test, type Page } from "@playwright/test";

const password = process.env.SIPMBA_ADMIN_PASSWORD ?? "";
const artifacts = process.env.SIPMBA_CONSOLE_ARTIFACTS ?? "../target/console-e2e";
const shots = `${artifacts}/screenshots`;
mkdirSync(shots, { recursive: true });
const figures: Record<string, number> = {};

test.describe.configure({ mode: "serial" });
test.skip(!process.env.SIPMBA_CONSOLE_URL, "SIPMBA_CONSOLE_URL names the server (services/sipmba/tests/console.rs sets it)");

async function signIn(page: Page, username: string, secret: string) {
  await page.goto("/");
  await expect(page).toHaveURL(/\/oauth2\/authorize\?/);
  await page.getByLabel("Username", { exact: true }).fill(username);
  await page.getByLabel("Password", { exact: true }).fill(secret);
  await page.getByRole("button", { name: "Sign in" }).click();
  await expect(page.getByRole("heading", { name: "Things", level: 1 })).toBeVisible();
}

/** axe-core finds no serious or critical violation; the page fits 375 px; both widths photographed. */
async function checkPage(page: Page, name: string) {
  const results = await new AxeBuilder({ page }).withTags(["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]).analyze();
  const serious = results.violations.filter((v) => v.impact === "serious" || v.impact === "critical");
  expect(serious.map((v) => `${v.id}: ${v.help} (${v.nodes.map((n) => n.target.join(" ")).join("; ")})`), `${name}: axe`).toEqual([]);
  await page.screenshot({ path: `${shots}/${name}.png`, fullPage: true });
  const wide = page.viewportSize()!;
  await page.setViewportSize({ width: 375, height: 800 });
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth);
  expect(overflow, `${name}: nothing wider than 375 px`).toBeLessThanOrEqual(0);
  await page.screenshot({ path: `${shots}/${name}-375.png`, fullPage: true });
  await page.setViewportSize(wide);
}

test("a wrong password is refused with a clear message", async ({ page }) => {
  await page.goto("/");
  await expect(page).toHaveURL(/\/oauth2\/authorize\?/);
  const results = await new AxeBuilder({ page }).withTags(["wcag2a", "wcag2aa"]).analyze();
  expect(results.violations.filter((v) => v.impact === "serious" || v.impact === "critical")).toEqual([]);
  await page.screenshot({ path: `${shots}/login.png`, fullPage: true });
  await page.getByLabel("Username", { exact: true }).fill("admin");
  await page.getByLabel("Password", { exact: true }).fill("not-the-password");
  await page.getByRole("button", { name: "Sign in" }).click();
  await expect(page.getByText("Wrong username or password.")).toBeVisible();
  await expect(page).toHaveURL(/\/oauth2\/authorize/);
  await page.screenshot({ path: `${shots}/login-refused.png`, fullPage: true });
});

test("the console serves its pages with a strict policy", async ({ request }) => {
  const response = await request.get("/");
  const headers = response.headers();
  const csp = headers["content-security-policy"] ?? "";
  expect(csp).toContain("script-src 'self'");
  expect(csp).not.toContain("unsafe-inline");
  expect(csp).toContain("frame-ancestors 'none'");
  expect(headers["x-content-type-options"]).toBe("nosniff");
  expect(headers["cache-control"]).toContain("no-store");
  expect(headers["set-cookie"]).toBeUndefined();
  const html = await response.text();
  expect(html).not.toMatch(/<script(?![^>]*\bsrc=)[^>]*>/);
  expect(html).not.toMatch(/https?:\/\//);
});

test("admin signs in, sees demo-thing online, its plot grows, fan.on is ACKED", async ({ page }) => {
  await signIn(page, "admin", password);
  const row = page.locator("tr[data-thing='demo-thing']");
  await expect(row.getByTestId("presence")).toHaveText("online", { timeout: 30_000 });
  await checkPage(page, "things");

  const opened = Date.now();
  await row.getByRole("link", { name: "demo-thing" }).click();
  await expect(page.getByRole("heading", { name: "demo-thing", level: 1 })).toBeVisible();
  const plot = page.locator("figure.plot[data-metric='temperature']");
  await expect(plot).toBeVisible({ timeout: 20_000 });
  await expect.poll(async () => Number(await plot.getAttribute("data-points")), { timeout: 20_000 }).toBeGreaterThan(0);
  figures.first_plot_ms = Date.now() - opened;
  const before = Number(await plot.getAttribute("data-points"));
  await expect.poll(async () => Number(await plot.getAttribute("data-points")), { timeout: 10_000 }).toBeGreaterThan(before);
  await expect(page.locator(".card[data-metric='temperature'] strong")).not.toBeEmpty();

  await page.getByLabel("Command", { exact: true }).fill("fan.on");
  await page.getByRole("button", { name: "Send" }).click();
  const watched = page.locator("section.watched");
  await expect(watched).toHaveAttribute("data-state", /QUEUED|DELIVERED|ACKED/);
  await expect(watched).toHaveAttribute("data-state", "ACKED", { timeout: 30_000 });
  await expect(watched.locator("ol.trail")).toContainText("ACKED");
  await checkPage(page, "thing");

  await page.getByRole("link", { name: "Commands" }).click();
  await expect(page.locator("tr[data-command]").filter({ hasText: "fan.on" }).first()).toContainText("ACKED");
  await page.getByLabel("ACKED", { exact: true }).check();
  await expect(page.locator("tr[data-command]").first()).toContainText("ACKED");
  await checkPage(page, "commands");
});

test("a rule created in the console fires", async ({ page }) => {
  await signIn(page, "admin", password);
  await page.getByRole("link", { name: "Rules" }).click();
  await page.getByLabel("New rule", { exact: true }).fill("always-e2e");
  await page.getByLabel("Watches", { exact: true }).selectOption({ label: "demo-thing" });
  await page.getByLabel("Then send", { exact: true }).fill("fan.off");
  await page.getByLabel("When", { exact: true }).fill("temperature >");
  await page.getByRole("button", { name: "Create" }).click();
  await expect(page.getByRole("alert")).toContainText("expected `<metric> <op> <number>`");
  await page.getByLabel("When", { exact: true }).fill("temperature > -100");
  await page.getByRole("button", { name: "Create" }).click();
  const row = page.locator("tr[data-rule='always-e2e']");
  await expect(row).toContainText("temperature > -100");
  await row.getByRole("button", { name: "Firings" }).click();
  await expect(page.locator("[data-firings='always-e2e'] li.firing").first()).toBeVisible({ timeout: 30_000 });
  await checkPage(page, "rules");
  await row.getByRole("button", { name: "Disable" }).click();
  await expect(row).toContainText("disabled");
});

test("a child user created in the console signs in and sees none of the parent's things", async ({ page }) => {
  await signIn(page, "admin", password);
  await page.getByRole("link", { name: "Users" }).click();
  await page.getByLabel("New user", { exact: true }).fill("carol-e2e");
  await page.locator("#user-password").fill("carol-e2e-password-1");
  await page.locator("#user-again").fill("carol-e2e-password-1");
  await page.getByRole("button", { name: "Create" }).click();
  await expect(page.getByRole("status")).toContainText("carol-e2e is created");
  await expect(page.locator("li[data-user='carol-e2e']")).toBeVisible();
  await checkPage(page, "users");

  await page.getByRole("link", { name: "Channels" }).click();
  await page.getByLabel("New channel", { exact: true }).fill("greenhouse-e2e");
  await page.getByRole("button", { name: "Create" }).click();
  await expect(page.locator("[data-channel='greenhouse-e2e']")).toBeVisible();
  await checkPage(page, "channels");

  await page.getByRole("link", { name: "Session" }).click();
  await expect(page.getByTestId("username")).toHaveText("admin");
  await checkPage(page, "session");
  await page.getByRole("main").getByRole("button", { name: "Sign out" }).click();
  await expect(page.getByText("You signed out.")).toBeVisible();

  await signIn(page, "carol-e2e", "carol-e2e-password-1");
  await expect(page.getByText("No thing matches.")).toBeVisible();
  await expect(page.locator("tr[data-thing]")).toHaveCount(0);
  await page.getByRole("link", { name: "Commands" }).click();
  await expect(page.locator("tr[data-command]")).toHaveCount(0);
  await page.screenshot({ path: `${shots}/child-things.png`, fullPage: true });
});

test("a thing created in the console shows its secret once; rotated, disabled; a channel connects and shares it", async ({ page, request }) => {
  const token = (id: string, secret: string) =>
    request.post("/oauth2/token", { form: { grant_type: "client_credentials", client_id: id, client_secret: secret } });
  await signIn(page, "admin", password);
  await page.getByLabel("New thing", { exact: true }).fill("greenhouse-2");
  await page.getByLabel("Labels", { exact: true }).fill("site=north");
  await page.getByRole("button", { name: "Create" }).click();
  const dialog = page.getByRole("dialog");
  await expect(dialog).toContainText("greenhouse-2 is created");
  const clientId = (await dialog.getByTestId("client-id").textContent())!;
  const secret = (await dialog.getByTestId("client-secret").textContent())!;
  expect((await token(clientId, secret)).status(), "the secret shown is the thing's").toBe(200);
  await page.screenshot({ path: `${shots}/thing-secret.png`, fullPage: true });
  await dialog.getByRole("button", { name: "I have kept it" }).click();
  await expect(dialog).toBeHidden();
  await expect(page.getByTestId("client-secret")).toHaveCount(0);
  const row = page.locator("tr[data-thing='greenhouse-2']");
  await expect(row).toContainText("site=north");
  await page.getByLabel("Filter", { exact: true }).fill("site=north");
  await expect(page.locator("tr[data-thing]")).toHaveCount(1);
  await page.getByLabel("Filter", { exact: true }).fill("demo");
  await expect(page.locator("tr[data-thing]")).toHaveCount(1);
  await expect(page.locator("tr[data-thing='demo-thing']")).toBeVisible();
  await page.getByLabel("Filter", { exact: true }).fill("");

  await row.getByRole("button", { name: "Rotate secret" }).click();
  const rotated = (await page.getByRole("dialog").getByTestId("client-secret").textContent())!;
  expect(rotated).not.toBe(secret);
  expect((await token(clientId, rotated)).status(), "the new secret works").toBe(200);
  expect((await token(clientId, secret)).status(), "the old secret no longer does").not.toBe(200);
  await page.getByRole("dialog").getByRole("button", { name: "I have kept it" }).click();

  await row.getByRole("button", { name: "Disable" }).click();
  await expect(row).toContainText("disabled");
  expect((await token(clientId, rotated)).status(), "a disabled thing gets no token").not.toBe(200);
  await row.getByRole("button", { name: "Enable" }).click();
  await expect(row).toContainText("active");

  await page.getByRole("link", { name: "Channels" }).click();
  await page.getByLabel("New channel", { exact: true }).fill("north-e2e");
  await page.getByRole("button", { name: "Create" }).click();
  const channel = page.locator("[data-channel='north-e2e']");
  await channel.getByLabel("Connect", { exact: true }).selectOption({ label: "greenhouse-2" });
  await channel.getByRole("button", { name: "Connect" }).click();
  await expect(channel.getByRole("listitem").filter({ hasText: "greenhouse-2" })).toBeVisible();
  await channel.getByLabel("Grant to", { exact: true }).fill("carol-e2e");
  await channel.getByLabel("send commands", { exact: true }).check();
  await channel.getByLabel("Expires in", { exact: true }).fill("2h");
  await channel.getByRole("button", { name: "Grant" }).click();
  const grant = channel.getByRole("listitem").filter({ hasText: "carol-e2e" });
  await expect(grant).toContainText("read telemetry, send commands, until");
  await page.screenshot({ path: `${shots}/channel-shared.png`, fullPage: true });
  await grant.getByRole("button", { name: "Revoke" }).click();
  await expect(grant).toHaveCount(0);
  await channel.getByRole("listitem").filter({ hasText: "greenhouse-2" }).getByRole("button", { name: "Disconnect" }).click();
  await expect(channel.getByRole("listitem").filter({ hasText: "greenhouse-2" })).toHaveCount(0);

  await page.getByRole("link", { name: "Users" }).click();
  const carol = page.locator("li[data-user='carol-e2e']");
  await carol.getByRole("button", { name: "Disable" }).click();
  const confirm = page.getByRole("dialog");
  await expect(confirm).toContainText("This disables carol-e2e, and with them no thing.");
  await expect(confirm).toContainText("stops working within a second");
  await confirm.getByRole("button", { name: "Disable carol-e2e" }).click();
  await expect(carol).toContainText("disabled");
  await carol.getByRole("button", { name: "Enable" }).click();
  await expect(carol).toContainText("active");
});

test("the console renews its access token before it expires and keeps working", async ({ page }) => {
  // The server under test issues user tokens for 60 s (services/sipmba/tests/console.rs).
  await signIn(page, "admin", password);
  await page.getByRole("link", { name: "Session" }).click();
  const left = async () => Number(/expires in (\d+) s/.exec((await page.getByTestId("expires").textContent()) ?? "")?.[1]);
  const first = await left();
  expect(first).toBeLessThanOrEqual(60);
  // Renewed at four fifths of its lifetime: the time left jumps back up.
  let lowest = first;
  await expect
    .poll(
      async () => {
        const now = await left();
        const renewed = now > lowest + 5;
        lowest = Math.min(lowest, now);
        return renewed;
      },
      { timeout: 70_000, intervals: [1_000] },
    )
    .toBe(true);
  await page.getByRole("link", { name: "Things" }).click();
  await expect(page.locator("tr[data-thing='demo-thing']")).toBeVisible();
});

test("after signing out, going back shows no data", async ({ page }) => {
  await signIn(page, "admin", password);
  await expect(page.locator("tr[data-thing='demo-thing']")).toBeVisible();
  await page.locator("tr[data-thing='demo-thing']").getByRole("link").click();
  await expect(page.getByRole("heading", { name: "demo-thing" })).toBeVisible();
  await page.getByRole("banner").getByRole("button", { name: "Sign out" }).click();
  await expect(page.getByText("You signed out.")).toBeVisible();
  await page.goBack();
  await page.waitForLoadState("load");
  await expect(page.getByRole("heading", { name: "demo-thing" })).toHaveCount(0);
  await expect(page.locator("tr[data-thing], .card, figure.plot")).toHaveCount(0);
  await page.screenshot({ path: `${shots}/signed-out-back.png`, fullPage: true });
});

test.afterAll(() => {
  writeFileSync(`${artifacts}/figures.json`, JSON.stringify(figures, null, 2));
});
