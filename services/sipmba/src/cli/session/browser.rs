//! `sipmba login` in a browser: the authorization code grant with PKCE (RFC 7636) and a loopback
//! redirect (RFC 8252 §7.3), so that no password is typed into the terminal. The CLI listens on
//! `127.0.0.1` on a port of the system's choosing, prints (and, unless told not to, opens) sso's
//! authorization URL, and waits for the browser to come back with a code; the code's `state` must
//! be the one it sent.

use std::time::Duration;

use axum::{
    Router,
    extract::{Query, State},
    http::{HeaderValue, header},
    response::{Html, IntoResponse, Response},
    routing::get,
};
use oauth2::{AuthUrl, AuthorizationCode, CsrfToken, PkceCodeChallenge, RedirectUrl};
use tokio::sync::mpsc;

use super::{CliError, Exit, Login, Session, Target, send};

/// How long the CLI waits for the browser.
const WAIT: Duration = Duration::from_secs(300);

/// What the browser brought back to the loopback address.
#[derive(Debug, Default, serde::Deserialize)]
struct Callback {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

impl Target {
    /// Signs in through the browser and caches the login; `open` asks the desktop to open the
    /// URL (it is printed either way).
    pub async fn login_in_browser(&self, open: bool) -> Result<Session, CliError> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .map_err(|e| {
                CliError::new(
                    Exit::Failure,
                    format!("cannot listen on 127.0.0.1 for the browser's answer: {e}"),
                )
            })?;
        let port = listener
            .local_addr()
            .map_err(|e| CliError::new(Exit::Failure, format!("the loopback listener: {e}")))?
            .port();
        let redirect = format!("http://127.0.0.1:{port}/callback");
        let authorize = format!("{}/oauth2/authorize", self.base("sso"));
        let client = self
            .oauth()?
            .set_auth_uri(
                AuthUrl::new(authorize)
                    .map_err(|e| CliError::usage(format!("--server {:?}: {e}", self.server)))?,
            )
            .set_redirect_uri(
                RedirectUrl::new(redirect)
                    .map_err(|e| CliError::new(Exit::Failure, format!("redirect URI: {e}")))?,
            );
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let (url, state) = client
            .authorize_url(CsrfToken::new_random)
            .set_pkce_challenge(challenge)
            .url();
        eprintln!(
            "Open this address in a browser to sign in to {}:\n\n  {url}\n",
            self.server
        );
        if open {
            open_in_browser(url.as_str());
        }
        eprintln!(
            "waiting for the browser (at most {} minutes)...",
            WAIT.as_secs() / 60
        );
        let answer = wait_for_browser(listener).await?;
        if answer.state.as_deref() != Some(state.secret().as_str()) {
            return Err(CliError::new(
                Exit::Auth,
                "the browser came back from another sign-in (its state is not this one's); run \
                 `sipmba login` again",
            ));
        }
        if let Some(error) = answer.error {
            let detail = answer.error_description.unwrap_or_default();
            return Err(CliError::new(
                Exit::Auth,
                format!("the sign-in was refused: {error}: {detail}"),
            ));
        }
        let code = answer
            .code
            .ok_or_else(|| CliError::new(Exit::Auth, "the browser came back without a code"))?;
        let http = self.http()?;
        let tokens = client
            .exchange_code(AuthorizationCode::new(code))
            .set_pkce_verifier(verifier)
            .request_async(&|r| send(&http, r))
            .await
            .map_err(|e| self.token_error(e, "exchanging the sign-in's code"))?;
        // The username is the user's own record, read with the new token.
        let mut login = Login::from_answer("", &tokens)?;
        let session = self.session(login.clone())?;
        let user =
            sipmba_proto::v1::user_service_client::UserServiceClient::new(session.channel.clone())
                .get_user(session.req(sipmba_proto::v1::GetUserRequest {
                    id: Some(session.user_id()),
                }))
                .await
                .map_err(|s| {
                    CliError::new(
                        Exit::Failure,
                        format!("signed in, but reading your user failed: {}", s.message()),
                    )
                })?
                .into_inner();
        login.username = user.username;
        self.remember(login)
    }
}

/// Serves `/callback` until the browser comes, or [`WAIT`] passes.
async fn wait_for_browser(listener: tokio::net::TcpListener) -> Result<Callback, CliError> {
    let (tx, mut rx) = mpsc::channel::<Callback>(1);
    let app = Router::new()
        .route("/callback", get(callback))
        .with_state(tx);
    let server = axum::serve(listener, app);
    tokio::select! {
        served = server => Err(CliError::new(
            Exit::Failure,
            format!("the loopback listener stopped: {served:?}"),
        )),
        answer = rx.recv() => answer.ok_or_else(|| CliError::new(Exit::Failure, "no answer")),
        () = tokio::time::sleep(WAIT) => Err(CliError::new(
            Exit::Auth,
            format!("no sign-in within {} minutes", WAIT.as_secs() / 60),
        )),
    }
}

async fn callback(
    State(tx): State<mpsc::Sender<Callback>>,
    Query(answer): Query<Callback>,
) -> Response {
    let message = if answer.error.is_some() {
        "The sign-in was refused; the terminal says why."
    } else {
        "Signed in. You can close this tab and go back to the terminal."
    };
    let _ = tx.try_send(answer);
    let mut response = Html(format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>sipmba login</title></head><body><main><p>{message}</p></main></body></html>\n"
    ))
    .into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

/// Asks the desktop to open `url`; nothing happens where there is none (the URL is printed).
fn open_in_browser(url: &str) {
    let opener = if cfg!(target_os = "macos") {
        "open"
    } else {
        "xdg-open"
    };
    let _ = std::process::Command::new(opener)
        .arg(url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
}
