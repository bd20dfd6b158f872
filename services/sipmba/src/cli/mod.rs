//! The `sipmba` command-line tool: log in, then manage users, things, channels, commands,
//! telemetry and rules of a running platform.

use std::path::PathBuf;

mod channels;
mod commands;
mod names;
pub mod output;
mod rules;
pub use rules::condition;
pub mod session;
mod telemetry;
mod things;
mod users;

use output::Format;
use session::{Session, Target};

/// Options every CLI command takes.
#[derive(Debug, Clone, clap::Args)]
pub struct Global {
    /// The platform's address (gRPC and HTTP share it).
    #[arg(
        long,
        global = true,
        env = "SIPMBA_SERVER",
        default_value = "http://127.0.0.1:7400"
    )]
    pub server: String,
    /// A service that answers at its own address, as SERVICE=URL (sso, objects, control,
    /// processing; repeat the option, or separate them with commas in the variable): a platform
    /// whose services run apart, as a `SipMba` on Kubernetes does. sso's address also takes the
    /// logins.
    #[arg(
        long = "endpoint",
        global = true,
        env = "SIPMBA_ENDPOINTS",
        value_delimiter = ',',
        value_name = "SERVICE=URL",
        value_parser = session::parse_endpoint
    )]
    pub endpoints: Vec<(String, String)>,
    /// A CA certificate (PEM) to trust for an https:// server.
    #[arg(long, global = true, env = "SIPMBA_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// How results are printed.
    #[arg(long, short = 'o', global = true, value_enum, default_value = "table")]
    pub output: Format,
    /// Where logins are cached (default: ~/.config/sipmba).
    #[arg(long, global = true, env = "SIPMBA_CONFIG_DIR", hide_env_values = true)]
    pub config_dir: Option<PathBuf>,
}

/// The CLI's commands.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Logs in with a username and password (OAuth 2.0 password grant); the login is cached
    /// (mode 0600) and refreshed as needed.
    Login(LoginArgs),
    /// Forgets the login and revokes it at the server.
    Logout,
    /// Shows who you are logged in as.
    Whoami,
    /// Users below you in the tree.
    #[command(subcommand)]
    Users(users::Users),
    /// Things (devices): create, list with their presence, secrets.
    #[command(subcommand)]
    Things(things::Things),
    /// Channels: share things with other users.
    #[command(subcommand)]
    Channels(channels::Channels),
    /// Commands to things: send, status, watch.
    #[command(subcommand)]
    Commands(commands::Commands),
    /// Telemetry: latest values, history, live tail.
    #[command(subcommand)]
    Telemetry(telemetry::Telemetry),
    /// Rules: send a command when a metric crosses a threshold.
    #[command(subcommand)]
    Rules(rules::Rules),
}

/// Arguments of `sipmba login`: in a browser, unless a username or `--password-stdin` is given.
#[derive(Debug, clap::Args)]
pub struct LoginArgs {
    /// Your username: sign in with a password here instead of in a browser (asked for on the
    /// terminal, or read with --password-stdin).
    #[arg(long, short = 'u', env = "SIPMBA_USERNAME")]
    username: Option<String>,
    /// Read the password from the first line of standard input (for scripts).
    #[arg(long)]
    password_stdin: bool,
    /// Sign in in a browser (the default without --username).
    #[arg(long, conflicts_with_all = ["username", "password_stdin"])]
    browser: bool,
    /// With the browser: print the address only, do not open it.
    #[arg(long)]
    no_open: bool,
}

/// What an exit code means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Exit {
    /// Any other failure.
    Failure = 1,
    /// Bad usage or invalid input.
    Usage = 2,
    /// Not logged in, login expired, wrong credentials.
    Auth = 3,
    /// Not found, or not yours to see or change.
    NotFound = 4,
    /// Conflicts with the current state: exists already, not allowed now, rate limited.
    Conflict = 5,
    /// The platform cannot be reached or is not ready.
    Unreachable = 6,
    /// The command waited for ended FAILED or EXPIRED, or the wait timed out.
    CommandFailed = 7,
}

/// The exit codes, for `--help`.
pub const EXIT_CODES: &str = "Exit codes: 0 success, 1 failure, 2 bad usage or input, 3 not logged in or \
login expired, 4 not found or not permitted, 5 conflict (exists, wrong state, rate limited), 6 platform \
unreachable, 7 the command waited for failed, expired or timed out.";

/// An error for the user: what happened, and what to do next.
#[derive(Debug)]
pub struct CliError {
    /// The exit code.
    pub exit: Exit,
    /// What happened.
    pub message: String,
    /// What to do next.
    pub hint: Option<String>,
}

impl CliError {
    /// An error with an exit code.
    pub fn new(exit: Exit, message: impl Into<String>) -> Self {
        Self {
            exit,
            message: message.into(),
            hint: None,
        }
    }

    /// Bad usage or input.
    pub fn usage(message: impl Into<String>) -> Self {
        Self::new(Exit::Usage, message)
    }

    /// Adds what to do next.
    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// A gRPC error, described as `what` failing.
    pub fn status(what: &str, status: &tonic::Status) -> Self {
        use tonic::Code;
        // Some statuses come without words (a service the server does not run): say the code.
        let message = match status.message() {
            "" => format!("{what}: {}", status.code().description()),
            words => format!("{what}: {words}"),
        };
        match status.code() {
            Code::Unauthenticated => {
                Self::new(Exit::Auth, message).hint("run `sipmba login` (again)")
            }
            Code::PermissionDenied => Self::new(Exit::NotFound, message)
                .hint("your login does not allow this; ask a user above you"),
            Code::NotFound => Self::new(Exit::NotFound, message),
            Code::InvalidArgument | Code::OutOfRange => Self::new(Exit::Usage, message),
            Code::AlreadyExists | Code::FailedPrecondition | Code::Aborted => {
                Self::new(Exit::Conflict, message)
            }
            Code::ResourceExhausted => {
                Self::new(Exit::Conflict, message).hint("rate limited: try again in a moment")
            }
            Code::Unavailable | Code::DeadlineExceeded => Self::new(Exit::Unreachable, message)
                .hint("is the platform running? start it with `sipmba server --dev`, or pass --server"),
            Code::Unimplemented => Self::new(Exit::Failure, message).hint(
                "this server does not run that service (collect, control and processing need the log)",
            ),
            _ => Self::new(Exit::Failure, message),
        }
    }
}

/// Maps a gRPC result's error to a [`CliError`] about `what`.
pub trait Context<T> {
    /// Describes a failure as `what` failing.
    fn doing(self, what: &str) -> Result<T, CliError>;
}

impl<T> Context<T> for Result<tonic::Response<T>, tonic::Status> {
    fn doing(self, what: &str) -> Result<T, CliError> {
        self.map(tonic::Response::into_inner)
            .map_err(|s| CliError::status(what, &s))
    }
}

/// What every command needs.
pub struct Ctx {
    /// Where the platform is.
    pub target: Target,
    /// How to print.
    pub format: Format,
}

impl Ctx {
    /// The cached login (refreshed when due).
    pub async fn session(&self) -> Result<Session, CliError> {
        self.target.session_from_cache().await
    }
}

/// Runs a CLI command.
pub async fn run(global: Global, command: Command) -> Result<(), CliError> {
    let ctx = Ctx {
        target: Target {
            server: global.server.trim_end_matches('/').to_owned(),
            endpoints: global.endpoints.into_iter().collect(),
            ca_file: global.ca_file,
            config_dir: global
                .config_dir
                .unwrap_or_else(session::default_config_dir),
        },
        format: global.output,
    };
    match command {
        Command::Login(args) => login(&ctx, args).await,
        Command::Logout => {
            if ctx.target.logout().await? {
                eprintln!("logged out of {}", ctx.target.server);
            } else {
                eprintln!("you were not logged in to {}", ctx.target.server);
            }
            Ok(())
        }
        Command::Whoami => {
            let session = ctx.session().await?;
            output::print_object(
                ctx.format,
                &[
                    ("username", session.username.clone().into()),
                    ("id", session.user.to_string().into()),
                    ("server", ctx.target.server.clone().into()),
                ],
            );
            Ok(())
        }
        Command::Users(c) => users::users(&ctx, c).await,
        Command::Things(c) => things::things(&ctx, c).await,
        Command::Channels(c) => channels::channels(&ctx, c).await,
        Command::Commands(c) => commands::commands(&ctx, c).await,
        Command::Telemetry(c) => telemetry::telemetry(&ctx, c).await,
        Command::Rules(c) => rules::rules(&ctx, c).await,
    }
}

async fn login(ctx: &Ctx, args: LoginArgs) -> Result<(), CliError> {
    use std::io::IsTerminal;
    let username = match args.username {
        Some(u) if !args.browser => u,
        _ if args.browser || !args.password_stdin => {
            let session = ctx.target.login_in_browser(!args.no_open).await?;
            eprintln!(
                "logged in to {} as {} ({})",
                ctx.target.server, session.username, session.user
            );
            return Ok(());
        }
        _ if std::io::stdin().is_terminal() => {
            eprint!("username: ");
            read_line()?
        }
        _ => {
            return Err(CliError::usage(
                "--password-stdin needs --username (or SIPMBA_USERNAME)",
            ));
        }
    };
    let password = if args.password_stdin {
        read_line()?
    } else if std::io::stdin().is_terminal() {
        rpassword::prompt_password(format!("password for {username}: "))
            .map_err(|e| CliError::new(Exit::Failure, format!("reading the password: {e}")))?
    } else {
        return Err(CliError::usage(
            "no terminal to ask for the password: pass --password-stdin and pipe it in",
        ));
    };
    let session = {
        let _spinner = output::Spinner::start(format!("logging in to {}", ctx.target.server));
        ctx.target.login(&username, &password).await?
    };
    eprintln!(
        "logged in to {} as {} ({})",
        ctx.target.server, session.username, session.user
    );
    Ok(())
}

fn read_line() -> Result<String, CliError> {
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .map_err(|e| CliError::new(Exit::Failure, format!("reading standard input: {e}")))?;
    let line = line.trim_end_matches(['\r', '\n']).to_owned();
    if line.is_empty() {
        return Err(CliError::usage("nothing was given on standard input"));
    }
    Ok(line)
}

/// Parses `key=value` (or `key` alone, when `bare` is allowed).
pub fn key_value(text: &str) -> Result<(String, Option<String>), String> {
    match text.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), Some(v.to_owned()))),
        None if !text.is_empty() => Ok((text.to_owned(), None)),
        _ => Err(format!("{text:?} is not key=value")),
    }
}

/// Parses a duration like `90s`, `15m`, `24h`, `7d`.
pub fn duration(text: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("{text:?}: {e} (try 30s, 15m, 24h)"))
}

/// A page of 100 from `token` (empty: the first).
pub fn page(token: String) -> Option<sipmba_proto::v1::PageRequest> {
    Some(sipmba_proto::v1::PageRequest {
        page_size: 100,
        page_token: token,
    })
}

/// A protobuf duration.
pub fn pb_duration(d: std::time::Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: 0,
    }
}
