//! The authorization endpoint (`/oauth2/authorize`): sso's own login page for the console and
//! the CLI. `GET` checks the request ([`Sso::authorization_request`]) and shows the form; `POST`
//! signs the user in through the same password check and throttle as the token endpoint and sends
//! the browser back with a code.
//!
//! The form carries a CSRF token that must equal the one in a `SameSite=Strict`, `HttpOnly`
//! cookie set with the form (`Secure`, and `__Host-` named, when sso is served over TLS). The page
//! runs no script; its Content-Security-Policy allows only its own stylesheet, forms posted to
//! itself or to the client's redirect URI, and no framing.

use std::collections::HashMap;

use axum::{
    Form,
    extract::{Query, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Redirect, Response},
};
use subtle::ConstantTimeEq;

use super::ClientAddr;
use crate::{
    OAuthErrorCode, Sso,
    authorize::{AuthorizationRequest, CLI_CLIENT, Refusal},
    secrets,
};

/// The parameters of the request the form carries back.
const CARRIED: [&str; 6] = [
    "response_type",
    "client_id",
    "redirect_uri",
    "state",
    "code_challenge",
    "code_challenge_method",
];

/// The page's stylesheet (`/oauth2/login.css`).
pub(super) async fn stylesheet() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        include_str!("login.css"),
    )
        .into_response()
}

/// `GET /oauth2/authorize`.
pub(super) async fn show(
    State(sso): State<Sso>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    match sso.authorization_request(|name| query.get(name).map(String::as_str)) {
        Ok(request) => {
            let csrf = secrets::random_secret();
            let mut response = page(&request, &query, &csrf, None, StatusCode::OK);
            if let Ok(cookie) = HeaderValue::from_str(&csrf_cookie(&sso, &csrf)) {
                response.headers_mut().insert(header::SET_COOKIE, cookie);
            }
            response
        }
        Err(refusal) => refused(&refusal),
    }
}

/// `POST /oauth2/authorize`: the form.
pub(super) async fn sign_in(
    State(sso): State<Sso>,
    ClientAddr(addr): ClientAddr,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let request = match sso.authorization_request(|name| form.get(name).map(String::as_str)) {
        Ok(request) => request,
        Err(refusal) => return refused(&refusal),
    };
    let csrf = form.get("csrf").map_or("", String::as_str);
    let cookie = cookie_value(&headers, &cookie_name(&sso)).unwrap_or_default();
    if csrf.is_empty() || !bool::from(csrf.as_bytes().ct_eq(cookie.as_bytes())) {
        return message_page(
            StatusCode::FORBIDDEN,
            "This sign-in form has expired or did not come from this page. Go back to the \
             application and sign in again.",
        );
    }
    let field = |name: &str| form.get(name).map_or("", String::as_str);
    let again =
        |status: StatusCode, message: &str| page(&request, &form, csrf, Some(message), status);
    let user = match sso
        .verify_password(field("username"), field("password"), addr)
        .await
    {
        Ok(user) => user,
        Err(e) => {
            return match e.code {
                OAuthErrorCode::SlowDown => again(
                    StatusCode::TOO_MANY_REQUESTS,
                    &format!(
                        "Too many failed sign-ins. Try again in {} s.",
                        e.retry_after.map_or(60, |d| d.as_secs().max(1))
                    ),
                ),
                OAuthErrorCode::InvalidRequest => {
                    again(StatusCode::BAD_REQUEST, "Enter your username and password.")
                }
                OAuthErrorCode::InvalidGrant => {
                    again(StatusCode::UNAUTHORIZED, "Wrong username or password.")
                }
                _ => again(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Signing in is not possible right now; try again in a moment.",
                ),
            };
        }
    };
    if let Err(e) = sso.require_active_user(user).await {
        let refusal = Refusal::Redirected {
            redirect_uri: request.redirect_uri.clone(),
            state: Some(request.state.clone()),
            error: if e.code == OAuthErrorCode::InvalidGrant {
                "access_denied"
            } else {
                "temporarily_unavailable"
            },
            description: e.description,
        };
        return refused(&refusal);
    }
    match sso.issue_code(&request, user).await {
        Ok(location) => secured(
            Redirect::to(&location).into_response(),
            origin(&request.redirect_uri).as_deref(),
        ),
        Err(e) => {
            tracing::warn!(error = %e, "could not issue an authorization code");
            again(
                StatusCode::SERVICE_UNAVAILABLE,
                "Signing in is not possible right now; try again in a moment.",
            )
        }
    }
}

/// A refused request: sent back to the client, or, when the client or its redirect URI is not
/// known, shown here.
fn refused(refusal: &Refusal) -> Response {
    match (refusal.location(), refusal) {
        (Some(location), _) => secured(Redirect::to(&location).into_response(), None),
        (None, Refusal::Shown(message)) => message_page(
            StatusCode::BAD_REQUEST,
            &format!("This sign-in request cannot be used: {message}."),
        ),
        (None, Refusal::Redirected { .. }) => message_page(
            StatusCode::BAD_REQUEST,
            "This sign-in request cannot be used.",
        ),
    }
}

fn cookie_name(sso: &Sso) -> String {
    if tls(sso) {
        "__Host-sipmba-csrf".into()
    } else {
        "sipmba-csrf".into()
    }
}

fn tls(sso: &Sso) -> bool {
    sso.inner.config.issuer.starts_with("https://")
}

fn csrf_cookie(sso: &Sso, value: &str) -> String {
    let secure = if tls(sso) { "; Secure" } else { "" };
    format!(
        "{}={value}; Path=/oauth2/authorize; HttpOnly; SameSite=Strict; Max-Age=900{secure}",
        cookie_name(sso)
    )
}

fn cookie_value(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v.to_owned())
}

/// Escapes text for HTML content and attribute values.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The security headers of every page here; `form_target` is the origin a form may be sent on
/// to (the client's redirect URI), besides this one.
fn secured(response: Response, form_target: Option<&str>) -> Response {
    let form_action = match form_target {
        Some(origin) => format!("'self' {origin}"),
        None => "'self'".into(),
    };
    let csp = format!(
        "default-src 'none'; style-src 'self'; form-action {form_action}; frame-ancestors 'none'; \
         base-uri 'none'"
    );
    sipmba_runtime::browser::page(response, &csp, "no-store")
}

fn origin(uri: &str) -> Option<String> {
    url::Url::parse(uri)
        .ok()
        .map(|u| u.origin().ascii_serialization())
        .filter(|o| o != "null")
}

fn document(title: &str, body: &str) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{title}</title>\n<link rel=\"stylesheet\" href=\"/oauth2/login.css\">\n</head>\n\
         <body>\n<main>\n{body}</main>\n</body>\n</html>\n",
        title = escape(title)
    )
}

fn message_page(status: StatusCode, message: &str) -> Response {
    let body = format!(
        "<h1>Sign in to SIP-MBA</h1>\n<p role=\"alert\">{}</p>\n",
        escape(message)
    );
    secured(
        (
            status,
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            document("Sign in — SIP-MBA", &body),
        )
            .into_response(),
        None,
    )
}

/// The login form for `request`, carrying `params` and `csrf`, with `message` above it.
fn page(
    request: &AuthorizationRequest,
    params: &HashMap<String, String>,
    csrf: &str,
    message: Option<&str>,
    status: StatusCode,
) -> Response {
    let who = if request.client_id == CLI_CLIENT {
        "the sipmba command line"
    } else {
        "the SIP-MBA console"
    };
    let mut hidden = String::new();
    for name in CARRIED.iter().copied().chain(["scope"]) {
        if let Some(value) = params.get(name) {
            hidden.push_str(&format!(
                "<input type=\"hidden\" name=\"{name}\" value=\"{}\">\n",
                escape(value)
            ));
        }
    }
    hidden.push_str(&format!(
        "<input type=\"hidden\" name=\"csrf\" value=\"{}\">\n",
        escape(csrf)
    ));
    let alert = message.map_or_else(String::new, |m| {
        format!(
            "<p class=\"alert\" role=\"alert\" id=\"problem\">{}</p>\n",
            escape(m)
        )
    });
    let described = if message.is_some() {
        " aria-describedby=\"problem\""
    } else {
        ""
    };
    let username = escape(params.get("username").map_or("", String::as_str));
    let body = format!(
        "<h1>Sign in to SIP-MBA</h1>\n<p>for {who}</p>\n{alert}\
         <form method=\"post\" action=\"/oauth2/authorize\"{described}>\n{hidden}\
         <label for=\"username\">Username</label>\n\
         <input id=\"username\" name=\"username\" autocomplete=\"username\" required \
         maxlength=\"64\" value=\"{username}\" autofocus>\n\
         <label for=\"password\">Password</label>\n\
         <input id=\"password\" name=\"password\" type=\"password\" \
         autocomplete=\"current-password\" required maxlength=\"1024\">\n\
         <button type=\"submit\">Sign in</button>\n</form>\n"
    );
    secured(
        (
            status,
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            document("Sign in — SIP-MBA", &body),
        )
            .into_response(),
        origin(&request.redirect_uri).as_deref(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped_for_html() {
        assert_eq!(
            escape("<a href=\"x\">'&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }

    #[test]
    fn the_csrf_cookie_is_read_among_others() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; sipmba-csrf=abc; b=2"),
        );
        assert_eq!(
            cookie_value(&headers, "sipmba-csrf").as_deref(),
            Some("abc")
        );
        assert_eq!(cookie_value(&headers, "other"), None);
    }
}
