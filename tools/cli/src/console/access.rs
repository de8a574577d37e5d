//! Who may use the console.
//!
//! On loopback it is the machine's own user, as with every other `choreo` command. Anywhere else
//! the console refuses to start without `CHOREO_CONSOLE_TOKEN`, and then a browser gives the
//! token once on a small form and keeps it in a cookie (`HttpOnly`, `SameSite=Strict`); a script
//! can send it as `Authorization: Bearer TOKEN`. Whatever the address, a form posted from another
//! site is refused, so a page elsewhere cannot make a browser redrive or purge dead letters.

use std::net::SocketAddr;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use maud::html;
use secrecy::{ExposeSecret, SecretString};

use super::Console;
use super::page::{self, Layout};
use crate::Failure;

/// The cookie that keeps the token.
const COOKIE: &str = "choreo_console";

/// Refuses an address other than loopback without a token.
pub fn check_listen(listen: SocketAddr, token: Option<&SecretString>) -> Result<(), Failure> {
    match token {
        Some(token) if token.expose_secret().trim().is_empty() => Err(Failure::usage(
            "CHOREO_CONSOLE_TOKEN is empty: set it to a long random string, e.g. $(openssl rand \
             -hex 16)",
        )),
        None if !listen.ip().is_loopback() => Err(Failure::usage(format!(
            "choreo console refuses to listen on {listen} without CHOREO_CONSOLE_TOKEN: anyone \
             who reaches that address could redrive and purge dead letters. Set \
             CHOREO_CONSOLE_TOKEN (e.g. $(openssl rand -hex 16)), or listen on loopback \
             (--listen 127.0.0.1:8090)"
        ))),
        _ => Ok(()),
    }
}

/// Lets a request through when it may be served; otherwise answers with the token's form, or
/// refuses a form posted from another site.
pub async fn guard(State(console): State<Console>, request: Request, next: Next) -> Response {
    let path = request.uri().path();
    // The form itself and its styles, and the probe (which says nothing but "ok").
    let open = matches!(path, "/login" | "/console.css" | "/healthz");
    if request.method() == axum::http::Method::POST && from_another_site(request.headers()) {
        return (
            StatusCode::FORBIDDEN,
            "choreo console: a form posted from another site is refused",
        )
            .into_response();
    }
    let Some(token) = &console.token else {
        return next.run(request).await;
    };
    if open || presented(request.headers()).is_some_and(|given| admits(&given, token)) {
        return next.run(request).await;
    }
    let wanted = request
        .uri()
        .path_and_query()
        .map_or("/".to_string(), |p| p.to_string());
    if path.starts_with("/live/") {
        return (StatusCode::UNAUTHORIZED, "log in first").into_response();
    }
    login_page(&console, &wanted, false)
}

#[derive(Debug, serde::Deserialize)]
pub struct Login {
    token: String,
    #[serde(default)]
    next: String,
}

/// The token's form posted: keeps the token in a cookie and goes where the person was going.
pub async fn login(State(console): State<Console>, form: axum::Form<Login>) -> Response {
    let Some(token) = &console.token else {
        return Redirect::to("/").into_response();
    };
    if !same(form.token.trim(), token) {
        return login_page(&console, &form.next, true);
    }
    let next = page::local_path(&form.next).unwrap_or("/");
    let cookie = format!(
        "{COOKIE}={}; Path=/; HttpOnly; SameSite=Strict",
        kept(token.expose_secret())
    );
    ([(header::SET_COOKIE, cookie)], Redirect::to(next)).into_response()
}

fn login_page(console: &Console, next: &str, wrong: bool) -> Response {
    let body = html! {
        h1 { "Log in" }
        @if wrong {
            div.banner.bad { "That is not the console's token." }
        }
        p { "This console is served on a shared address. Give the token it was started with "
            "(" code { "CHOREO_CONSOLE_TOKEN" } "); this browser keeps it in a cookie." }
        form.login method="post" action="/login" {
            input type="hidden" name="next" value=(next);
            label { "Token " input type="password" name="token" autofocus autocomplete="current-password"; }
            button type="submit" { "Log in" }
        }
    };
    let layout = Layout::new("Log in", console).plain();
    (StatusCode::UNAUTHORIZED, layout.render(body)).into_response()
}

/// What a request carries: the token as a bearer token, or the cookie.
#[derive(Debug, PartialEq, Eq)]
enum Presented {
    Bearer(String),
    Cookie(String),
}

fn presented(headers: &HeaderMap) -> Option<Presented> {
    if let Some(bearer) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    {
        return Some(Presented::Bearer(bearer.trim().to_string()));
    }
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| Presented::Cookie(value.to_string()))
}

fn admits(given: &Presented, token: &SecretString) -> bool {
    match given {
        Presented::Bearer(bearer) => same(bearer, token),
        Presented::Cookie(cookie) => {
            same_bytes(cookie.as_bytes(), kept(token.expose_secret()).as_bytes())
        }
    }
}

/// What the cookie keeps: not the token itself (which may hold characters a cookie cannot,
/// and would then sit in the browser's store), but a digest of it.
fn kept(token: &str) -> String {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(format!("choreo-console\0{token}").as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

fn same(given: &str, token: &SecretString) -> bool {
    same_bytes(given.as_bytes(), token.expose_secret().as_bytes())
}

/// Compares in time that does not depend on where the first difference is.
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether the browser says a request comes from a page of another site.
fn from_another_site(headers: &HeaderMap) -> bool {
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        return site == "cross-site" || site == "same-site";
    }
    match (
        headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()),
        headers.get(header::HOST).and_then(|v| v.to_str().ok()),
    ) {
        (Some("null"), _) => true,
        (Some(origin), Some(host)) => origin.split_once("://").map(|(_, rest)| rest) != Some(host),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_listens_without_a_token() {
        let token = SecretString::from("s3cret");
        for address in ["127.0.0.1:8090", "[::1]:8090", "127.0.0.2:0"] {
            assert!(check_listen(address.parse().expect("address"), None).is_ok());
        }
        for address in ["0.0.0.0:8090", "[::]:8090", "192.0.2.7:8090"] {
            let refused = check_listen(address.parse().expect("address"), None).expect_err(address);
            assert_eq!(refused.code, 64);
            assert!(
                refused.message.contains("CHOREO_CONSOLE_TOKEN"),
                "{}",
                refused.message
            );
            assert!(check_listen(address.parse().expect("address"), Some(&token)).is_ok());
        }
        let empty = SecretString::from("  ");
        assert!(check_listen("0.0.0.0:1".parse().expect("address"), Some(&empty)).is_err());
    }

    #[test]
    fn the_token_comes_from_the_cookie_or_a_bearer_header() {
        let token = SecretString::from("s3cret");
        let mut headers = HeaderMap::new();
        let cookie = format!("theme=dark; choreo_console={}", kept("s3cret"));
        headers.insert(header::COOKIE, cookie.parse().expect("header"));
        assert!(presented(&headers).is_some_and(|t| admits(&t, &token)));
        headers.insert(
            header::COOKIE,
            "choreo_console=s3cret".parse().expect("header"),
        );
        assert!(
            !presented(&headers).is_some_and(|t| admits(&t, &token)),
            "the cookie keeps a digest, not the token"
        );
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            "Bearer s3cret".parse().expect("header"),
        );
        assert!(presented(&headers).is_some_and(|t| admits(&t, &token)));
        headers.insert(
            header::AUTHORIZATION,
            "Bearer s3cre".parse().expect("header"),
        );
        assert!(!presented(&headers).is_some_and(|t| admits(&t, &token)));
        assert!(presented(&HeaderMap::new()).is_none());
    }

    #[test]
    fn a_form_from_another_site_is_told_apart() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, "127.0.0.1:8090".parse().expect("header"));
        assert!(
            !from_another_site(&headers),
            "no Origin: curl, a form of old"
        );
        headers.insert(
            header::ORIGIN,
            "http://127.0.0.1:8090".parse().expect("header"),
        );
        assert!(!from_another_site(&headers));
        headers.insert(
            header::ORIGIN,
            "https://evil.example".parse().expect("header"),
        );
        assert!(from_another_site(&headers));
        headers.insert("sec-fetch-site", "same-origin".parse().expect("header"));
        assert!(!from_another_site(&headers), "the browser's word wins");
        headers.insert("sec-fetch-site", "cross-site".parse().expect("header"));
        assert!(from_another_site(&headers));
    }
}
