//! The authorization code grant with PKCE, through sso's login page as a browser uses it: the
//! form and its CSRF cookie, the redirect with a code, and the exchange by the `oauth2` crate;
//! then each way it must refuse, with the RFC's error.

use oauth2::{
    AuthorizationCode, CsrfToken, PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, TokenUrl,
    basic::BasicClient,
};

use std::collections::HashMap;

use serde_json::json;

use super::*;

sipmba_testkit::on_both_databases!(
    a_user_signs_in_on_the_login_page_and_the_code_is_exchanged_once,
    the_code_flow_refuses_what_the_rfcs_refuse,
);

const CLI: &str = "sipmba-cli";

/// A browser without a cookie jar of its own: redirects are looked at, not followed.
fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// An authorization request of the CLI, as `oauth2` builds it, with its PKCE verifier.
fn authorize_url(p: &Platform, redirect: &str) -> (String, CsrfToken, PkceCodeVerifier) {
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let client = BasicClient::new(ClientId::new(CLI.into()))
        .set_auth_uri(oauth2::AuthUrl::new(format!("{}/oauth2/authorize", p.base)).unwrap())
        .set_redirect_uri(RedirectUrl::new(redirect.into()).unwrap());
    let (url, state) = client
        .authorize_url(CsrfToken::new_random)
        .set_pkce_challenge(challenge)
        .url();
    (url.to_string(), state, verifier)
}

/// The login form at `url`: its CSRF field, the cookie it came with, and its carried fields.
struct LoginForm {
    fields: Vec<(String, String)>,
    cookie: String,
    html: String,
    csp: String,
}

async fn open(url: &str) -> LoginForm {
    let response = browser().get(url).send().await.unwrap();
    assert_eq!(response.status(), 200, "{url}");
    let csp = response
        .headers()
        .get("content-security-policy")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(response.headers()["x-content-type-options"], "nosniff");
    let set_cookie = response.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .to_owned();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/oauth2/authorize"] {
        assert!(set_cookie.contains(attribute), "{set_cookie}");
    }
    assert!(!set_cookie.contains("Secure"), "no TLS here: {set_cookie}");
    let cookie = set_cookie.split(';').next().unwrap().to_owned();
    let html = response.text().await.unwrap();
    let fields = sipmba_testkit::browser::hidden_fields(&html);
    LoginForm {
        fields,
        cookie,
        html,
        csp,
    }
}

/// Posts the form with `username` and `password`.
async fn submit(
    p: &Platform,
    form: &LoginForm,
    username: &str,
    password: &str,
) -> reqwest::Response {
    let mut fields = form.fields.clone();
    fields.push(("username".into(), username.into()));
    fields.push(("password".into(), password.into()));
    browser()
        .post(format!("{}/oauth2/authorize", p.base))
        .header("cookie", &form.cookie)
        .form(&fields)
        .send()
        .await
        .unwrap()
}

/// The query parameters of a redirect's `Location`.
fn redirected(response: &reqwest::Response) -> HashMap<String, String> {
    assert_eq!(response.status(), 303, "{response:?}");
    let location = response.headers()["location"].to_str().unwrap();
    url::Url::parse(location)
        .unwrap()
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

async fn exchange(
    p: &Platform,
    code: &str,
    redirect: &str,
    verifier: &str,
) -> Result<oauth2::basic::BasicTokenResponse, BasicErrorResponseType> {
    BasicClient::new(ClientId::new(CLI.into()))
        .set_token_uri(TokenUrl::new(format!("{}/oauth2/token", p.base)).unwrap())
        .set_redirect_uri(RedirectUrl::new(redirect.into()).unwrap())
        .exchange_code(AuthorizationCode::new(code.into()))
        .set_pkce_verifier(PkceCodeVerifier::new(verifier.into()))
        .request_async(&http)
        .await
        .map_err(oauth_error)
}

/// Signs `username` in and returns the code and the verifier.
async fn code_for(
    p: &Platform,
    username: &str,
    password: &str,
    redirect: &str,
) -> (String, String) {
    let (url, state, verifier) = authorize_url(p, redirect);
    let form = open(&url).await;
    let back = redirected(&submit(p, &form, username, password).await);
    assert_eq!(back["state"], *state.secret());
    (back["code"].clone(), verifier.secret().clone())
}

async fn a_user_signs_in_on_the_login_page_and_the_code_is_exchanged_once(backend: Backend) {
    let p = start(backend).await;
    let user = p
        .sso
        .register("browser-user", "browser password")
        .await
        .unwrap();
    let redirect = "http://127.0.0.1:53682/callback";
    let (url, state, verifier) = authorize_url(&p, redirect);
    let form = open(&url).await;
    assert!(
        form.html
            .contains("<label for=\"password\">Password</label>")
    );
    assert!(form.html.contains("the sipmba command line"));
    assert!(!form.html.contains("<script"), "the page runs no script");
    assert!(!form.csp.contains("unsafe-inline"), "{}", form.csp);
    assert!(form.csp.contains("frame-ancestors 'none'"), "{}", form.csp);
    assert!(
        form.csp
            .contains("form-action 'self' http://127.0.0.1:53682"),
        "{}",
        form.csp
    );

    // A wrong password keeps the person on the page, with a clear message.
    let wrong = submit(&p, &form, "browser-user", "not the password").await;
    assert_eq!(wrong.status(), 401);
    let page = wrong.text().await.unwrap();
    assert!(page.contains("role=\"alert\""), "{page}");
    assert!(page.contains("Wrong username or password."), "{page}");
    assert!(
        !page.contains("not the password"),
        "the password is not echoed"
    );

    // The right one sends the browser back with a code and the client's state.
    let back = redirected(&submit(&p, &form, "browser-user", "browser password").await);
    assert_eq!(back["state"], *state.secret());
    let code = back["code"].clone();
    let tokens = exchange(&p, &code, redirect, verifier.secret())
        .await
        .expect("the exchange");
    let principal = p
        .verifier()
        .verify(tokens.access_token().secret())
        .await
        .unwrap();
    assert_eq!((principal.kind, principal.subject), (Kind::User, user));
    let refresh = tokens.refresh_token().unwrap().clone();

    // The code again: refused, and what it gave is revoked.
    assert_eq!(
        exchange(&p, &code, redirect, verifier.secret())
            .await
            .unwrap_err(),
        BasicErrorResponseType::InvalidGrant
    );
    assert_eq!(
        p.client(CLI, None)
            .exchange_refresh_token(&refresh)
            .request_async(&http)
            .await
            .map_err(oauth_error)
            .unwrap_err(),
        BasicErrorResponseType::InvalidGrant
    );

    // The metadata says what is offered, and nothing that is not.
    let metadata: serde_json::Value =
        reqwest::get(format!("{}/.well-known/oauth-authorization-server", p.base))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    assert_eq!(
        metadata["authorization_endpoint"],
        format!("{}/oauth2/authorize", p.base)
    );
    assert_eq!(metadata["response_types_supported"], json!(["code"]));
    assert_eq!(
        metadata["code_challenge_methods_supported"],
        json!(["S256"])
    );
    assert!(
        metadata["grant_types_supported"]
            .as_array()
            .unwrap()
            .contains(&json!("authorization_code"))
    );
    assert!(
        metadata
            .get("id_token_signing_alg_values_supported")
            .is_none()
    );
}

async fn the_code_flow_refuses_what_the_rfcs_refuse(backend: Backend) {
    let p = start(backend).await;
    let root = p
        .sso
        .register("careful-user", "careful password")
        .await
        .unwrap();
    let redirect = "http://127.0.0.1:40001/callback";

    // PKCE: a verifier that is not the challenge's.
    let (code, _) = code_for(&p, "careful-user", "careful password", redirect).await;
    let other = PkceCodeChallenge::new_random_sha256().1;
    assert_eq!(
        exchange(&p, &code, redirect, other.secret())
            .await
            .unwrap_err(),
        BasicErrorResponseType::InvalidGrant
    );

    // The exchange names another redirect URI than the request did.
    let (code, verifier) = code_for(&p, "careful-user", "careful password", redirect).await;
    assert_eq!(
        exchange(&p, &code, "http://127.0.0.1:40002/callback", &verifier)
            .await
            .unwrap_err(),
        BasicErrorResponseType::InvalidGrant
    );

    // A redirect URI the client does not have: shown, never redirected to.
    let (url, _, _) = authorize_url(&p, "http://127.0.0.1:40001/callback");
    let foreign = url.replace(
        "redirect_uri=http%3A%2F%2F127.0.0.1%3A40001%2Fcallback",
        "redirect_uri=https%3A%2F%2Fevil.example%2Fcallback",
    );
    assert_ne!(foreign, url);
    let response = browser().get(&foreign).send().await.unwrap();
    assert_eq!(response.status(), 400);
    assert!(response.headers().get("location").is_none());
    assert!(
        response
            .text()
            .await
            .unwrap()
            .contains("is not a redirect URI of sipmba-cli")
    );

    // No state: invalid_request, sent back to the client.
    let stateless = url::Url::parse(&url)
        .unwrap()
        .query_pairs()
        .filter(|(k, _)| k != "state")
        .map(|(k, v)| {
            format!(
                "{k}={}",
                url::form_urlencoded::byte_serialize(v.as_bytes()).collect::<String>()
            )
        })
        .collect::<Vec<_>>()
        .join("&");
    let response = browser()
        .get(format!("{}/oauth2/authorize?{stateless}", p.base))
        .send()
        .await
        .unwrap();
    let back = redirected(&response);
    assert_eq!(back["error"], "invalid_request");
    assert!(back["error_description"].contains("state"), "{back:?}");
    assert!(!back.contains_key("state"));

    // A plain challenge method is not offered.
    let plain = url.replace("code_challenge_method=S256", "code_challenge_method=plain");
    let back = redirected(&browser().get(&plain).send().await.unwrap());
    assert_eq!(back["error"], "invalid_request");

    // The form without its cookie: refused, nothing issued.
    let (url, _, _) = authorize_url(&p, redirect);
    let mut form = open(&url).await;
    form.cookie = "sipmba-csrf=forged".into();
    let response = submit(&p, &form, "careful-user", "careful password").await;
    assert_eq!(response.status(), 403);

    // A disabled user: access_denied, with the state; a code issued before cannot be exchanged.
    let (code, verifier) = code_for(&p, "careful-user", "careful password", redirect).await;
    let admin = p.admin_token().await;
    pb::user_service_client::UserServiceClient::new(p.channel.clone())
        .disable_user(with_token(
            &admin,
            pb::DisableUserRequest {
                id: Some(pb::UserId {
                    value: root.to_string(),
                }),
            },
        ))
        .await
        .unwrap();
    let (url, state, _) = authorize_url(&p, redirect);
    let form = open(&url).await;
    let back = redirected(&submit(&p, &form, "careful-user", "careful password").await);
    assert_eq!(back["error"], "access_denied");
    assert_eq!(back["state"], *state.secret());
    assert!(!back.contains_key("code"));
    assert_eq!(
        exchange(&p, &code, redirect, &verifier).await.unwrap_err(),
        BasicErrorResponseType::InvalidGrant
    );
}
