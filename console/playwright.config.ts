import { defineConfig } from "@playwright/test";

// The console's end-to-end tests drive Debian's Chromium (never a downloaded browser) against a
// running `sipmba server --dev`. services/sipmba/tests/console.rs starts that server and runs
// these tests with SIPMBA_CONSOLE_URL, SIPMBA_ADMIN_PASSWORD and SIPMBA_CONSOLE_ARTIFACTS set.
const artifacts = process.env.SIPMBA_CONSOLE_ARTIFACTS ?? "../target/console-e2e";

export default defineConfig({
  testDir: "tests",
  outputDir: `${artifacts}/results`,
  fullyParallel: false,
  workers: 1,
  retries: 0,
  timeout: 90_000,
  expect: { timeout: 15_000 },
  reporter: [["list"]],
  use: {
    baseURL: process.env.SIPMBA_CONSOLE_URL,
    headless: true,
    viewport: { width: 1280, height: 860 },
    screenshot: "only-on-failure",
    trace: "retain-on-failure",
    launchOptions: {
      executablePath: process.env.SIPMBA_CHROMIUM ?? "/usr/bin/chromium",
      args: ["--no-sandbox", "--disable-dev-shm-usage"],
    },
  },
});
