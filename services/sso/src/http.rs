//! HTTP endpoints: the authorization endpoint and its login page ([`login`]), the token endpoint
//! (RFC 6749), introspection (RFC 7662), revocation (RFC 7009), the JWKS and the authorization
//! server's metadata (RFC 8414). Errors of the token, introspection and revocation endpoints are
//! RFC 6749 §5.2 JSON bodies.

mod login;

use std::{collections::HashMap, net::IpAddr};

use axum::{
    Form, Json, Router,
    extract::{FromRequestParts, State, rejection::FormRejection},
    http::{HeaderMap, HeaderValue, StatusCode, header, request::Parts},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use base64::{Engine, engine::general_purpose::STANDARD};
use serde_json::json;
use sipmba_auth::{Kind, scopes};
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

use crate::{Introspection, OAuthError, OAuthErrorCode, Sso};

/// The HTTP routes of sso.
pub fn router(sso: Sso) -> Router {
    Router::new()
        .route("/oauth2/authorize", get(login::show).post(login::sign_in))
        .route("/oauth2/login.css", get(login::stylesheet))
        .route("/oauth2/token", post(token))
        .route("/oauth2/introspect", post(introspect))
        .route("/oauth2/revoke", post(revoke))
        .route("/.well-known/jwks.json", get(jwks))
        .route("/.well-known/oauth-authorization-server", get(discovery))
        .route("/.well-known/openid-configuration", get(discovery))
        .with_state(sso)
}

/// The peer address, from the connection (never from headers a client can forge).
struct ClientAddr(Option<IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for ClientAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let ext = &parts.extensions;
        let addr = ext
            .get::<TcpConnectInfo>()
            .and_then(|c| c.remote_addr())
            .or_else(|| {
                ext.get::<TlsConnectInfo<TcpConnectInfo>>()
                    .and_then(|c| c.get_ref().remote_addr())
            });
        Ok(ClientAddr(addr.map(|a| a.ip())))
    }
}

fn no_store(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    response
}

fn error_response(e: &OAuthError, basic_auth: bool) -> Response {
    let status = match e.code {
        OAuthErrorCode::InvalidClient => StatusCode::UNAUTHORIZED,
        OAuthErrorCode::SlowDown => StatusCode::TOO_MANY_REQUESTS,
        OAuthErrorCode::ServerError => StatusCode::INTERNAL_SERVER_ERROR,
        OAuthErrorCode::TemporarilyUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::BAD_REQUEST,
    };
    let mut response = (
        status,
        Json(json!({ "error": e.code.as_str(), "error_description": e.description })),
    )
        .into_response();
    if let Some(wait) = e.retry_after
        && let Ok(value) = HeaderValue::from_str(&wait.as_secs().max(1).to_string())
    {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    if e.code == OAuthErrorCode::InvalidClient && basic_auth {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"sipmba\""),
        );
    }
    no_store(response)
}

fn bad_request(description: &str) -> OAuthError {
    OAuthError::new(OAuthErrorCode::InvalidRequest, description)
}

/// Client credentials from `Authorization: Basic` (RFC 6749 §2.3.1: each part form-encoded).
fn basic_credentials(headers: &HeaderMap) -> Result<Option<(String, String)>, OAuthError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let value = value
        .to_str()
        .map_err(|_| bad_request("the Authorization header is not ASCII"))?;
    let Some(encoded) = value
        .strip_prefix("Basic ")
        .or_else(|| value.strip_prefix("basic "))
    else {
        return Ok(None);
    };
    let decoded = STANDARD
        .decode(encoded.trim())
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| bad_request("the Basic credentials are not base64 of `id:secret`"))?;
    let (id, secret) = decoded
        .split_once(':')
        .ok_or_else(|| bad_request("the Basic credentials are not `id:secret`"))?;
    let unescape = |s: &str| {
        percent_encoding::percent_decode_str(&s.replace('+', " "))
            .decode_utf8()
            .map(|c| c.into_owned())
            .map_err(|_| bad_request("the Basic credentials are not UTF-8"))
    };
    Ok(Some((unescape(id)?, unescape(secret)?)))
}

/// The form body, or an RFC 6749 `invalid_request` that says what is wrong with it.
fn form_body(
    form: Result<Form<HashMap<String, String>>, FormRejection>,
) -> Result<HashMap<String, String>, OAuthError> {
    form.map(|Form(form)| form).map_err(|rejection| {
        bad_request(&format!(
            "the body must be application/x-www-form-urlencoded: {}",
            rejection.body_text()
        ))
    })
}

fn field<'a>(form: &'a HashMap<String, String>, name: &str) -> Result<&'a str, OAuthError> {
    form.get(name)
        .map(String::as_str)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| bad_request(&format!("`{name}` is required")))
}

async fn token(
    State(sso): State<Sso>,
    ClientAddr(addr): ClientAddr,
    headers: HeaderMap,
    form: Result<Form<HashMap<String, String>>, FormRejection>,
) -> Response {
    let form = match form_body(form) {
        Ok(form) => form,
        Err(e) => return error_response(&e, false),
    };
    let basic = match basic_credentials(&headers) {
        Ok(basic) => basic,
        Err(e) => return error_response(&e, false),
    };
    let used_basic = basic.is_some();
    let result = async {
        let scope = form.get("scope").map_or("", String::as_str);
        match form.get("grant_type").map(String::as_str) {
            Some("password") => {
                sso.password_grant(field(&form, "username")?, field(&form, "password")?, scope, addr)
                    .await
            }
            Some("refresh_token") => sso.refresh_grant(field(&form, "refresh_token")?, scope).await,
            Some("authorization_code") => {
                sso.code_grant(
                    field(&form, "code")?,
                    field(&form, "client_id")?,
                    field(&form, "redirect_uri")?,
                    field(&form, "code_verifier")?,
                )
                .await
            }
            Some("client_credentials") => {
                let (id, secret) = match basic {
                    Some(pair) => pair,
                    None => (
                        field(&form, "client_id")?.to_owned(),
                        field(&form, "client_secret")?.to_owned(),
                    ),
                };
                sso.client_credentials_grant(&id, &secret, scope, addr).await
            }
            Some(other) => Err(OAuthError::new(
                OAuthErrorCode::UnsupportedGrantType,
                format!("grant_type {other:?} is not supported; use authorization_code, password, refresh_token or client_credentials"),
            )),
            None => Err(bad_request("`grant_type` is required")),
        }
    }
    .await;
    match result {
        Ok(issued) => {
            let mut body = json!({
                "access_token": issued.access_token,
                "token_type": "Bearer",
                "expires_in": issued.expires_in.as_secs(),
                "scope": issued.scope,
            });
            if let Some(refresh) = issued.refresh_token {
                body["refresh_token"] = json!(refresh);
            }
            no_store(Json(body).into_response())
        }
        Err(e) => error_response(&e, used_basic),
    }
}

/// Introspection needs a caller holding `tokens:introspect`: a bearer token, or Basic
/// credentials of a service client.
async fn authorize_introspection(
    sso: &Sso,
    headers: &HeaderMap,
    addr: Option<IpAddr>,
) -> Result<(), OAuthError> {
    if let Some((id, secret)) = basic_credentials(headers)? {
        let client = sso.authenticate_client(&id, &secret, addr).await?;
        if !client
            .scopes
            .split_whitespace()
            .any(|s| s == scopes::TOKENS_INTROSPECT)
        {
            return Err(OAuthError::new(
                OAuthErrorCode::InvalidClient,
                "this client may not introspect tokens (it lacks tokens:introspect)",
            ));
        }
        return Ok(());
    }
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let Some(token) = bearer else {
        return Err(OAuthError::new(
            OAuthErrorCode::InvalidClient,
            "introspection needs client authentication (Basic) or a bearer token with tokens:introspect",
        ));
    };
    let principal = sso
        .verifier()
        .verify(token)
        .await
        .map_err(|e| OAuthError::new(OAuthErrorCode::InvalidClient, e.to_string()))?;
    if !principal.has_scope(scopes::TOKENS_INTROSPECT) {
        return Err(OAuthError::new(
            OAuthErrorCode::InvalidClient,
            "the bearer token lacks the tokens:introspect scope",
        ));
    }
    Ok(())
}

async fn introspect(
    State(sso): State<Sso>,
    ClientAddr(addr): ClientAddr,
    headers: HeaderMap,
    form: Result<Form<HashMap<String, String>>, FormRejection>,
) -> Response {
    let form = match form_body(form) {
        Ok(form) => form,
        Err(e) => return error_response(&e, false),
    };
    if let Err(e) = authorize_introspection(&sso, &headers, addr).await {
        return error_response(&e, true);
    }
    let token = match field(&form, "token") {
        Ok(token) => token,
        Err(e) => return error_response(&e, false),
    };
    match sso.introspect(token).await {
        Ok(info) => no_store(Json(introspection_json(&sso, &info)).into_response()),
        Err(e) => error_response(&e, false),
    }
}

fn introspection_json(sso: &Sso, info: &Introspection) -> serde_json::Value {
    if !info.active {
        return json!({ "active": false });
    }
    let c = &sso.inner.config;
    let mut body = json!({
        "active": true,
        "scope": info.scope,
        "sub": info.sub.map(|s| s.to_string()),
        "kind": info.kind.map(Kind::as_str),
        "exp": info.exp,
        "iat": info.iat,
        "iss": c.issuer,
        "aud": c.audience,
        "token_type": info.token_type,
        "jti": info.jti,
    });
    if let Some(client) = &info.client_id {
        body["client_id"] = json!(client);
    }
    if let Some(owner) = info.owner {
        body["owner"] = json!(owner.to_string());
    }
    body
}

async fn revoke(
    State(sso): State<Sso>,
    form: Result<Form<HashMap<String, String>>, FormRejection>,
) -> Response {
    let form = match form_body(form) {
        Ok(form) => form,
        Err(e) => return error_response(&e, false),
    };
    let token = match field(&form, "token") {
        Ok(token) => token,
        Err(e) => return error_response(&e, false),
    };
    match sso.revoke(token).await {
        Ok(()) => no_store(StatusCode::OK.into_response()),
        Err(e) => error_response(&e, false),
    }
}

async fn jwks(State(sso): State<Sso>) -> Response {
    let mut response = Json(sso.jwks()).into_response();
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=60"),
    );
    response
}

/// The authorization server's metadata (RFC 8414), served at both well-known paths: exactly what
/// is offered. sso issues access and refresh tokens, no ID tokens.
async fn discovery(State(sso): State<Sso>) -> Json<serde_json::Value> {
    let issuer = sso.inner.config.issuer.trim_end_matches('/').to_owned();
    let mut scopes: Vec<&str> = scopes::USER_SCOPES.to_vec();
    scopes.extend(scopes::THING_SCOPES);
    scopes.sort();
    scopes.dedup();
    Json(json!({
        "issuer": issuer,
        "authorization_endpoint": format!("{issuer}/oauth2/authorize"),
        "token_endpoint": format!("{issuer}/oauth2/token"),
        "introspection_endpoint": format!("{issuer}/oauth2/introspect"),
        "revocation_endpoint": format!("{issuer}/oauth2/revoke"),
        "jwks_uri": format!("{issuer}/.well-known/jwks.json"),
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": [
            "authorization_code", "password", "refresh_token", "client_credentials"
        ],
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": [
            "none", "client_secret_basic", "client_secret_post"
        ],
        "scopes_supported": scopes,
    }))
}
