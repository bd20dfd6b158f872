//! A browser's part in sso's sign-in, for tests: open the login page the authorization URL
//! shows, keep its CSRF cookie, post the form, and return where sso sends the browser next.

use std::collections::HashMap;

/// The hidden fields of a login page (`name`, `value`), values unescaped.
pub fn hidden_fields(html: &str) -> Vec<(String, String)> {
    html.split("<input type=\"hidden\" ")
        .skip(1)
        .filter_map(|input| {
            let name = input.split("name=\"").nth(1)?.split('"').next()?;
            let value = input.split("value=\"").nth(1)?.split('"').next()?;
            Some((name.to_owned(), unescape(value)))
        })
        .collect()
}

fn unescape(value: &str) -> String {
    value
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

/// Signs `username` in at the login page of `authorize_url`; returns the `Location` sso answers
/// with (the client's redirect URI, with a code or an error).
pub async fn sign_in(
    authorize_url: &str,
    username: &str,
    password: &str,
) -> anyhow::Result<String> {
    let browser = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let page = browser
        .get(authorize_url)
        .send()
        .await?
        .error_for_status()?;
    let cookie = page
        .headers()
        .get(reqwest::header::SET_COOKIE)
        .and_then(|c| c.to_str().ok())
        .and_then(|c| c.split(';').next())
        .ok_or_else(|| anyhow::anyhow!("the login page set no cookie"))?
        .to_owned();
    let html = page.text().await?;
    let mut fields: HashMap<String, String> = hidden_fields(&html).into_iter().collect();
    fields.insert("username".into(), username.into());
    fields.insert("password".into(), password.into());
    let mut action = reqwest::Url::parse(authorize_url)?;
    action.set_query(None);
    let answer = browser
        .post(action)
        .header(reqwest::header::COOKIE, cookie)
        .form(&fields)
        .send()
        .await?;
    anyhow::ensure!(
        answer.status() == reqwest::StatusCode::SEE_OTHER,
        "the login page answered {}: {}",
        answer.status(),
        answer.text().await.unwrap_or_default()
    );
    Ok(answer
        .headers()
        .get(reqwest::header::LOCATION)
        .and_then(|l| l.to_str().ok())
        .ok_or_else(|| anyhow::anyhow!("a redirect without a Location"))?
        .to_owned())
}
