//! The web console in a real headless Chromium (Debian's, driven by Playwright from
//! `console/tests`) against a `sipmba server --dev` process: the sign-in through sso's login page,
//! the demo thing live, its plot growing, a command to ACKED, a rule firing, a thing created with
//! its secret shown once, rotated and disabled, a channel sharing it, a child user's view,
//! renewing the access token, signing out; axe-core and 375 px on every page. Screenshots land in
//! `target/console-e2e/screenshots`, the time to the first plot in `target/console-e2e/figures.json`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use sipmba_testkit::{DevOptions, DevServer};

const BIN: &str = env!("CARGO_BIN_EXE_sipmba");

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[tokio::test(flavor = "multi_thread")]
async fn the_console_signs_in_shows_the_fleet_live_and_commands_it() {
    let console = workspace().join("console");
    let playwright = console.join("node_modules/.bin/playwright");
    let chromium = std::env::var("SIPMBA_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        playwright.is_file() && Path::new(&chromium).is_file(),
        "the console's tests need its npm packages and Chromium: run `.ci/setup console` (as .ci/test does)"
    );
    assert!(
        sipmba::console::built(),
        "this sipmba was built without the console: run `.ci/setup console`, then build again (as .ci/test does)"
    );

    // Users' access tokens last 60 s (the least sso allows), so that the browser renews one.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sipmba.toml");
    std::fs::write(&config, "[sso]\nuser_token_lifetime_secs = 60\n").unwrap();
    let dev = DevServer::start(
        Path::new(BIN),
        DevOptions {
            dir: Some(dir.path().to_path_buf()),
            args: vec!["--config".into(), config.display().to_string()],
            ..Default::default()
        },
    );
    let password = dev
        .password()
        .expect("a first start prints the admin password");
    let banner = dev.banner();
    assert!(
        banner.contains(&format!("console      {}/", dev.url)),
        "the banner names the console's address: {banner}"
    );
    dev.serving(&["sipmba.v1.ThingService", "sipmba.v1.CollectService"])
        .await;

    let artifacts = workspace().join("target/console-e2e");
    let _ = std::fs::remove_dir_all(&artifacts);
    std::fs::create_dir_all(&artifacts).unwrap();
    let status = tokio::task::spawn_blocking(move || {
        Command::new(&playwright)
            .args(["test", "--reporter=list,json"])
            .current_dir(&console)
            .env("SIPMBA_CONSOLE_URL", &dev.url)
            .env("SIPMBA_ADMIN_PASSWORD", &password)
            .env("SIPMBA_CONSOLE_ARTIFACTS", &artifacts)
            .env("SIPMBA_CHROMIUM", &chromium)
            .env("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
            .env("PLAYWRIGHT_JSON_OUTPUT_NAME", artifacts.join("report.json"))
            .status()
            .map(|status| (status, dev))
    })
    .await
    .unwrap();
    let (status, _dev) = status.expect("running playwright");
    let artifacts = workspace().join("target/console-e2e");
    let figures = std::fs::read_to_string(artifacts.join("figures.json")).unwrap_or_default();
    eprintln!("console figures: {figures}");
    assert!(
        status.success(),
        "the console's browser tests failed: {status}"
    );
    // Every test ran: none was skipped for want of the server's address or password.
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(artifacts.join("report.json")).unwrap())
            .unwrap();
    let stats = &report["stats"];
    assert_eq!(stats["skipped"], 0, "no browser test is skipped: {stats}");
    assert_eq!(stats["unexpected"], 0, "{stats}");
    assert!(
        stats["expected"].as_u64().unwrap_or(0) >= 9,
        "the browser tests ran: {stats}"
    );
}
