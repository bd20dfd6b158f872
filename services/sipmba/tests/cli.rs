//! The `sipmba` CLI driven as a user drives it, against a `sipmba server --dev` process: log in,
//! create a thing, watch its readings arrive, command it to ACKED, a rule, a child user, errors
//! with their exit codes, and a restart that keeps everything.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use serde_json::Value;
use sipmba_proto::v1 as pb;
use sipmba_testkit::{DevOptions, DevServer};

const BIN: &str = env!("CARGO_BIN_EXE_sipmba");

/// Starts `sipmba server --dev` in `dir` and waits for its banner.
fn start(dir: &Path, port: u16) -> DevServer {
    let dev = DevServer::start(
        Path::new(BIN),
        DevOptions {
            dir: Some(dir.to_path_buf()),
            port: Some(port),
            log_file: Some(dir.join("server.log")),
            ..Default::default()
        },
    );
    dev.banner();
    dev
}

/// Ctrl-C, and a clean exit.
fn interrupt(mut dev: DevServer) {
    dev.signal(sipmba_testkit::Signal::INT);
    let status = dev
        .wait_blocking(Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("the platform did not stop: {e}"));
    assert!(
        status.success(),
        "Ctrl-C stops the platform cleanly: {status}"
    );
}

/// Kills the process with this id unless forgotten (a failing test leaves nothing running).
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        sipmba_testkit::signal(self.0, sipmba_testkit::Signal::KILL);
    }
}

/// The CLI as a user with its own login cache runs it.
struct User {
    url: String,
    config: PathBuf,
}

impl User {
    fn cmd(&self, args: &[&str]) -> assert_cmd::Command {
        let mut cmd = assert_cmd::Command::new(BIN);
        cmd.args(args)
            .env("SIPMBA_SERVER", &self.url)
            .env("SIPMBA_CONFIG_DIR", &self.config)
            .timeout(Duration::from_secs(90));
        cmd
    }

    /// Runs a command with `-o json`; it must succeed.
    fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        let out = self
            .cmd(&all)
            .assert()
            .success()
            .get_output()
            .stdout
            .clone();
        serde_json::from_slice(&out).unwrap_or_else(|e| {
            panic!(
                "{args:?}: not JSON ({e}): {}",
                String::from_utf8_lossy(&out)
            )
        })
    }

    /// Runs a command with `-o json` printing one object per line (a stream); it must succeed.
    fn json_lines(&self, args: &[&str]) -> Vec<Value> {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        let out = self
            .cmd(&all)
            .assert()
            .success()
            .get_output()
            .stdout
            .clone();
        String::from_utf8(out)
            .unwrap()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(Value::is_object)
            .collect()
    }

    /// Runs a command that must fail with `code`; returns its standard error.
    fn fails(&self, args: &[&str], code: i32) -> String {
        let out = self.cmd(args).assert().code(code).get_output().clone();
        String::from_utf8(out.stderr).unwrap()
    }

    /// Runs a command reading `stdin` that must fail with `code`; returns its standard error.
    fn fails_reading(&self, args: &[&str], stdin: &str, code: i32) -> String {
        let out = self
            .cmd(args)
            .write_stdin(stdin)
            .assert()
            .code(code)
            .get_output()
            .clone();
        String::from_utf8(out.stderr).unwrap()
    }

    /// `sipmba login --no-open`, with a browser's part played by
    /// [`sipmba_testkit::browser::sign_in`] at the address the CLI prints.
    fn login_in_browser(&self, username: &str, password: &str) {
        use std::io::{BufRead, BufReader};
        let mut child = std::process::Command::new(BIN)
            .args(["login", "--no-open"])
            .env("SIPMBA_SERVER", &self.url)
            .env("SIPMBA_CONFIG_DIR", &self.config)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let killed = KillOnDrop(child.id());
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let mut said = String::new();
        let url = loop {
            let mut line = String::new();
            assert!(
                stderr.read_line(&mut line).unwrap() > 0,
                "the CLI ended before printing an address: {said}"
            );
            said.push_str(&line);
            if let Some(url) = line.trim().strip_prefix("http")
                && line.contains("/oauth2/authorize?")
            {
                break format!("http{url}");
            }
        };
        let _ = rustls::crypto::ring::default_provider().install_default();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let location = runtime
            .block_on(sipmba_testkit::browser::sign_in(&url, username, password))
            .unwrap();
        assert!(
            location.starts_with("http://127.0.0.1:") && location.contains("code="),
            "{location}"
        );
        let landed = runtime.block_on(async { reqwest::get(&location).await?.text().await });
        assert!(
            landed.unwrap().contains("Signed in."),
            "the browser is told"
        );
        let status = child.wait().unwrap();
        std::mem::forget(killed);
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
        assert!(status.success(), "{said}{rest}");
        assert!(rest.contains(&format!("as {username}")), "{said}{rest}");
    }

    fn login(&self, username: &str, password: &str) {
        self.cmd(&["login", "--username", username, "--password-stdin"])
            .write_stdin(format!("{password}\n"))
            .assert()
            .success();
    }
}

/// The thing's agent, as a user would run it: the edge agent with the secret the CLI printed.
fn run_agent(
    dir: &Path,
    url: &str,
    thing: &str,
    client_id: &str,
    secret: &str,
) -> (sipmba_edge::agent::Agent, tokio::runtime::Runtime) {
    let config = format!(
        "state_dir = {:?}\nsample_interval_secs = 1\nupload_interval_secs = 1\nmax_backoff_secs = 2\n\n\
         [[sensors]]\nkind = \"simulated\"\nmetric = \"temperature\"\nunit = \"Cel\"\nmin = 20.0\nmax = 25.0\n\n\
         [[outputs]]\nname = \"fan\"\n",
        dir.display().to_string()
    );
    let config = sipmba_edge::config::Config::parse(&config).unwrap();
    let outputs = sipmba_edge::agent::Outputs::open(&config);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let agent = runtime.block_on(async {
        let agent = sipmba_edge::agent::Agent::open(config, outputs).unwrap();
        agent
            .credentials
            .replace(pb::ProvisionRequest {
                thing: Some(pb::ThingId {
                    value: thing.to_owned(),
                }),
                collect_endpoint: url.to_owned(),
                client_id: client_id.to_owned(),
                client_secret: Some(secret.to_owned()),
                token_endpoint: Some(url.to_owned()),
                ..Default::default()
            })
            .unwrap();
        tokio::spawn(agent.clone().sampler());
        tokio::spawn(agent.clone().uploader());
        agent
    });
    (agent, runtime)
}

#[test]
fn a_user_logs_in_creates_a_thing_sees_its_readings_and_commands_it_to_acked() {
    let dir = tempfile::tempdir().unwrap();
    let port = sipmba_testkit::free_port_pair();
    let dev = start(dir.path(), port);
    let password = dev
        .password()
        .expect("the first start prints the admin password");
    // Our crates log at info, dependencies (the Kafka client first) only at warn.
    let log = std::fs::read_to_string(dir.path().join("server.log")).unwrap();
    let theirs: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(" INFO ") && !l.contains(" INFO sipmba"))
        .collect();
    assert!(theirs.is_empty(), "{theirs:#?}");
    assert!(
        dev.banner().contains("demo-thing ("),
        "the demo thing streams (tansu is installed by .ci/test): {}",
        dev.banner()
    );
    assert!(
        dev.banner().contains("login --username admin"),
        "{}",
        dev.banner()
    );
    let admin = User {
        url: dev.url.clone(),
        config: dir.path().join("admin-cli"),
    };

    // Not logged in yet: exit 3 and what to do.
    let err = admin.fails(&["things", "list"], 3);
    assert!(err.contains("sipmba login"), "{err}");
    // A wrong password is refused with exit 3, said once, with what to do; the right one is
    // cached, readable by us only.
    let err = admin.fails_reading(
        &["login", "-u", "admin", "--password-stdin"],
        "not the password\n",
        3,
    );
    assert_eq!(
        err.matches("wrong username or password").count(),
        1,
        "said once: {err}"
    );
    assert!(
        err.contains("hint:") && err.contains("set-password"),
        "{err}"
    );
    admin.login("admin", &password);
    let cache = admin.config.join("logins.json");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&cache).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let cached = std::fs::read_to_string(&cache).unwrap();
    assert!(
        cached.contains("refresh_token"),
        "the login can be refreshed"
    );
    assert_eq!(admin.json(&["whoami"])["username"], "admin");

    // In a browser, no password crosses the terminal: the CLI prints sso's address, the browser
    // signs in there, and the CLI takes the code at its loopback address.
    let browsing = User {
        url: dev.url.clone(),
        config: dir.path().join("browser-cli"),
    };
    browsing.login_in_browser("admin", &password);
    assert_eq!(browsing.json(&["whoami"])["username"], "admin");
    assert!(
        !browsing
            .json(&["things", "list"])
            .as_array()
            .unwrap()
            .is_empty(),
        "the browser's login works for commands"
    );

    // Services at addresses of their own (as a SipMba on Kubernetes runs them): with
    // --endpoint, each call goes to its service's address and the login to sso's, while the
    // server address answers nothing. A service left out goes to that address, unreachable.
    let nowhere = format!("http://127.0.0.1:{}", sipmba_testkit::free_port_pair());
    let apart = |endpoints: &[&str], args: &[&str]| {
        let mut cmd = assert_cmd::Command::new(BIN);
        cmd.arg("--server")
            .arg(&nowhere)
            .args(endpoints.iter().flat_map(|e| ["--endpoint", e]))
            .args(args)
            .env("SIPMBA_CONFIG_DIR", dir.path().join("apart-cli"))
            .env_remove("SIPMBA_SERVER")
            .timeout(Duration::from_secs(60));
        cmd
    };
    let every: Vec<String> = ["sso", "objects", "control", "processing"]
        .iter()
        .map(|s| format!("{s}={}", dev.url))
        .collect();
    let every: Vec<&str> = every.iter().map(String::as_str).collect();
    let no_processing = &every[..3];
    apart(&every, &["login", "-u", "admin", "--password-stdin"])
        .write_stdin(format!("{password}\n"))
        .assert()
        .success();
    apart(&every, &["whoami"]).assert().success();
    apart(&every, &["things", "list"]).assert().success();
    apart(no_processing, &["users", "tree"]).assert().success();
    apart(no_processing, &["telemetry", "latest", "demo-thing"])
        .assert()
        .code(6);
    let err = apart(&["collect=http://x"], &["whoami"])
        .assert()
        .code(2)
        .get_output()
        .stderr
        .clone();
    assert!(
        String::from_utf8_lossy(&err).contains("not a service the CLI calls"),
        "{}",
        String::from_utf8_lossy(&err)
    );

    // The demo thing's simulated agent streams into the platform.
    sipmba_testkit::eventually_blocking(
        "the demo thing's readings",
        Duration::from_secs(60),
        || {
            let latest = admin.json(&["telemetry", "latest", "demo-thing"]);
            latest
                .as_array()
                .unwrap()
                .iter()
                .any(|v| v["metric"] == "temperature")
        },
    );

    // A thing of our own, with its secret, and its agent.
    let thing = admin.json(&[
        "things",
        "create",
        "sensor-1",
        "--label",
        "room=lab",
        "--with-secret",
    ]);
    let id = thing["id"].as_str().unwrap().to_owned();
    assert_eq!(thing["labels"]["room"], "lab");
    let err = admin.fails(&["things", "create", "sensor-1"], 5);
    assert!(err.contains("error:"), "{err}");
    let (agent, _agent_runtime) = run_agent(
        &dir.path().join("agent"),
        &dev.url,
        &id,
        thing["client_id"].as_str().unwrap(),
        thing["client_secret"].as_str().unwrap(),
    );

    // Its readings arrive: three new ones through `tail -f`, then in the latest values.
    let events = admin.json_lines(&["telemetry", "tail", "sensor-1", "-f", "-n", "3"]);
    assert_eq!(events.len(), 3, "{events:?}");
    assert!(events.iter().all(|e| e["thing"] == id.as_str()));
    assert!(
        events
            .iter()
            .all(|e| e["metrics"]["temperature"].is_number())
    );
    let latest = admin.json(&["telemetry", "latest", &id]);
    assert!(
        latest
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["metric"] == "temperature"
                && v["unit"] == "Cel"
                && v["seq"].as_u64().unwrap() >= 3),
        "{latest}"
    );
    let history = admin.json(&[
        "telemetry",
        "history",
        "sensor-1",
        "temperature",
        "--since",
        "10m",
    ]);
    assert!(history.as_array().unwrap().len() >= 3, "{history}");
    // In buckets: a column per aggregation asked for, each with a value.
    let buckets = admin.json(&[
        "telemetry",
        "history",
        "sensor-1",
        "temperature",
        "--since",
        "10m",
        "--bucket",
        "1h",
        "--agg",
        "sum",
        "--agg",
        "count",
    ]);
    let bucket = buckets.as_array().unwrap().last().unwrap();
    let mut columns: Vec<&String> = bucket.as_object().unwrap().keys().collect();
    columns.sort();
    assert_eq!(columns, ["count", "start", "sum"], "{buckets}");
    assert!(
        bucket["sum"].as_f64().unwrap() >= 20.0 && bucket["count"].as_u64().unwrap() >= 1,
        "{buckets}"
    );
    // Listed online, with when it was last seen.
    sipmba_testkit::eventually_blocking("sensor-1 listed online", Duration::from_secs(30), || {
        let things = admin.json(&["things", "list"]);
        things
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["name"] == "sensor-1" && t["online"] == true && t["last_seen"].is_string())
    });

    // A command goes to ACKED, and the agent switched its output.
    let states = admin.json_lines(&[
        "commands",
        "send",
        "sensor-1",
        "fan.on",
        "--wait",
        "--timeout",
        "60s",
    ]);
    assert_eq!(states.last().unwrap()["state"], "ACKED", "{states:?}");
    assert_eq!(agent.output_is_on("fan"), Some(true));
    // A command the agent does not know ends FAILED: exit 7, with the agent's reason.
    let err = admin.fails(
        &[
            "commands",
            "send",
            "sensor-1",
            "warp.drive",
            "--wait",
            "--timeout",
            "60s",
        ],
        7,
    );
    assert!(err.contains("FAILED"), "{err}");
    // A command watched by id, once it is done, answers at once.
    let sent = admin.json(&["commands", "send", "sensor-1", "agent.ping"]);
    let command = sent["id"].as_str().unwrap().to_owned();
    admin
        .cmd(&["commands", "watch", &command, "--timeout", "60s"])
        .assert()
        .success();
    assert_eq!(
        admin.json(&["commands", "status", &command])["state"],
        "ACKED"
    );

    // A rule turns the fan off when it is warm enough (it always is).
    let rule = admin.json(&[
        "rules",
        "create",
        "cool-down",
        "--thing",
        "sensor-1",
        "--when",
        "temperature > -100",
        "--then",
        "fan.off",
    ]);
    assert_eq!(rule["enabled"], true, "{rule}");
    sipmba_testkit::eventually_blocking(
        "the rule fired and the fan is off",
        Duration::from_secs(60),
        || {
            let firings = admin.json(&["rules", "firings", "cool-down"]);
            !firings.as_array().unwrap().is_empty() && agent.output_is_on("fan") == Some(false)
        },
    );
    let err = admin.fails(
        &[
            "rules", "create", "bad", "--thing", "sensor-1", "--when", "warm", "--then", "x",
        ],
        2,
    );
    assert!(err.contains("--when"), "{err}");

    // A password that is too short is refused before the user exists: the retry succeeds.
    let err = admin.fails_reading(
        &["users", "create", "carol", "--password-stdin"],
        "short\n",
        2,
    );
    assert!(err.contains("8 to 1024 bytes"), "{err}");
    let users = admin.json(&["users", "tree"]).to_string();
    assert!(!users.contains("carol"), "no half-made user: {users}");
    // A child user with its own password logs in and sees its own (empty) subtree.
    admin
        .cmd(&["users", "create", "carol", "--password-stdin"])
        .write_stdin("carol's password\n")
        .assert()
        .success();
    let tree = admin
        .cmd(&["users", "tree"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let tree = String::from_utf8(tree).unwrap();
    assert!(
        tree.starts_with("admin") && tree.contains("└── carol"),
        "{tree}"
    );
    let carol = User {
        url: dev.url.clone(),
        config: dir.path().join("carol-cli"),
    };
    carol.login("carol", "carol's password");
    assert_eq!(carol.json(&["whoami"])["username"], "carol");
    assert_eq!(carol.json(&["things", "list"]), Value::Array(Vec::new()));
    let err = carol.fails(&["telemetry", "latest", &id], 4);
    assert!(err.contains("not found"), "{err}");
    // Shared through a channel, she reads it.
    admin.json(&["channels", "create", "lab"]);
    admin.json(&["channels", "connect", "lab", "sensor-1"]);
    let channel = admin.json(&[
        "channels",
        "grant",
        "lab",
        "carol",
        "-p",
        "read",
        "--expires-in",
        "1h",
    ]);
    assert_eq!(channel["grants"].as_array().unwrap().len(), 1, "{channel}");
    assert!(
        !carol
            .json(&["telemetry", "latest", &id])
            .as_array()
            .unwrap()
            .is_empty()
    );
    // She finds it in her list, marked as shared, and names it by its name.
    let listed = carol.json(&["things", "list"]);
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["name"], "sensor-1");
    assert_eq!(listed[0]["shared"], true);
    assert_eq!(admin.json(&["things", "list"])[0]["shared"], false);
    assert!(
        !carol
            .json(&["telemetry", "latest", "sensor-1"])
            .as_array()
            .unwrap()
            .is_empty()
    );

    // The platform unreachable: exit 6 and a hint.
    let nowhere = User {
        url: format!("http://127.0.0.1:{}", sipmba_testkit::free_port_pair()),
        config: dir.path().join("nowhere-cli"),
    };
    let err = nowhere.fails_reading(
        &["login", "-u", "admin", "--password-stdin"],
        "whatever password\n",
        6,
    );
    assert!(err.contains("hint:"), "{err}");

    // Ctrl-C stops it cleanly; started again it keeps the users, things and logins.
    interrupt(dev);
    let again = start(dir.path(), port);
    assert_eq!(
        again.password(),
        None,
        "the password is printed once: {}",
        again.banner()
    );
    let names: Vec<String> = admin
        .json(&["things", "list"])
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        names.contains(&"sensor-1".to_owned()) && names.contains(&"demo-thing".to_owned()),
        "{names:?}"
    );
    // Logged out, the CLI says so; the same password logs in again.
    admin.cmd(&["logout"]).assert().success();
    let err = admin.fails(&["whoami"], 3);
    assert!(err.contains("sipmba login"), "{err}");
    admin.login("admin", &password);
    assert_eq!(admin.json(&["whoami"])["username"], "admin");
    interrupt(again);
}

/// The README's walkthrough, line by line as written (a person types the passwords at the
/// prompts; here they come on standard input), against a fresh `--dev` platform.
#[test]
fn the_readme_walkthrough_works_as_written() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let root = root.canonicalize().unwrap();
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let block = readme
        .split("<!-- walkthrough:")
        .nth(1)
        .and_then(|rest| rest.split("```sh\n").nth(1))
        .and_then(|rest| rest.split("```").next())
        .expect("the README has a walkthrough block");
    let dir = tempfile::tempdir().unwrap();
    let dev = start(dir.path(), sipmba_testkit::free_port_pair());
    let password = dev.password().unwrap();
    let mut lines = block.lines();
    let alias = lines.next().unwrap();
    assert!(alias.starts_with("alias sipmba="), "{alias}");
    // The alias names the binary the build left in target/debug (another target dir: this one).
    let written = root.join("target/debug/sipmba");
    let alias = if written.canonicalize().ok() == Path::new(BIN).canonicalize().ok() {
        alias.to_owned()
    } else {
        format!("alias sipmba={BIN}")
    };
    let mut ran = 0;
    for line in lines {
        let command = line.split("  #").next().unwrap().trim();
        if command.is_empty() {
            continue;
        }
        let (command, stdin) = if command.contains(" login ") {
            (
                format!("{command} --password-stdin"),
                format!("{password}\n"),
            )
        } else if command.contains(" users create ") {
            (
                format!("{command} --password-stdin"),
                "carol's password\n".to_owned(),
            )
        } else {
            (command.to_owned(), String::new())
        };
        let out = assert_cmd::Command::new("bash")
            .args([
                "-c",
                &format!("shopt -s expand_aliases\n{alias}\n{command}"),
            ])
            .current_dir(&root)
            .env("SIPMBA_SERVER", &dev.url)
            .env("SIPMBA_CONFIG_DIR", dir.path().join("cli"))
            .write_stdin(stdin)
            .timeout(Duration::from_secs(90))
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "`{command}` failed ({}):\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        if command.ends_with("things list") {
            assert!(stdout.contains("demo-thing"), "{stdout}");
        }
        if command.contains("tail demo-thing -f -n 4") {
            let readings = stdout
                .lines()
                .filter(|l| l.contains("temperature="))
                .count();
            assert_eq!(readings, 4, "{stdout}");
        }
        if command.ends_with("users tree") {
            assert!(stdout.contains("└── carol"), "{stdout}");
        }
        ran += 1;
    }
    assert!(ran >= 10, "the walkthrough ran {ran} commands");
}
