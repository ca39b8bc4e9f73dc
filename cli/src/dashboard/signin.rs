//! Staff sign-in in front of the dashboard: every page and API of the dashboard needs a staff
//! certificate on the connection (`--http-tls`, see [`super::tls`]) or a session. With a users
//! file (`--http-users FILE`), `/signin` takes a name and password (checked off the runtime: a
//! hash costs a fraction of a second of CPU) and sets the session cookie, `/signout` ends it.
//! A page asked for without either is sent to `/signin`, an API call answered 401. Refusals are
//! logged with the name, never with the password.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Form, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use serde::Deserialize;

use crate::staff::{SESSION, Sessions, Users};

const COOKIE: &str = "cuntong_session";
const SIGNIN_HTML: &str = include_str!("signin.html");

#[derive(Clone)]
struct Guard {
    /// Who signs in by password, if anyone does.
    users: Option<Arc<Users>>,
    sessions: Arc<Sessions>,
}

/// `dashboard` behind a sign-in (by `users`' passwords, or by staff certificates alone), with
/// the sign-in pages beside it.
pub(super) fn guard(dashboard: Router, users: Option<Arc<Users>>) -> Router {
    let g = Guard {
        users,
        sessions: Arc::new(Sessions::default()),
    };
    let pages = Router::new()
        .route("/signin", get(page).post(sign_in))
        .route("/signout", get(sign_out))
        .with_state(g.clone());
    dashboard
        .route_layer(axum::middleware::from_fn_with_state(g, require_session))
        .merge(pages)
}

/// The session token the request carries, if any.
fn token(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| c.trim().strip_prefix(COOKIE)?.strip_prefix('='))
        .map(str::to_owned)
}

async fn require_session(State(g): State<Guard>, req: Request, next: Next) -> Response {
    let by_certificate = req.extensions().get::<super::tls::StaffCert>().is_some();
    if by_certificate || token(req.headers()).is_some_and(|t| g.sessions.who(&t).is_some()) {
        return next.run(req).await;
    }
    if req.uri().path().starts_with("/api/") {
        (StatusCode::UNAUTHORIZED, "sign in first: /signin").into_response()
    } else {
        Redirect::to("/signin").into_response()
    }
}

#[derive(Deserialize)]
struct Refused {
    refused: Option<String>,
}

async fn page(State(g): State<Guard>, Query(q): Query<Refused>) -> Html<String> {
    let note = match (&g.users, q.refused.is_some()) {
        (None, _) => {
            "<p class=\"refused\" id=\"refused\">请用工作人员证书登录 (sign in with a staff certificate of the fleet CA)</p>"
        }
        (Some(_), true) => {
            "<p class=\"refused\" id=\"refused\">用户名或密码不对 (name or password refused)</p>"
        }
        (Some(_), false) => "",
    };
    Html(SIGNIN_HTML.replace("<!--refused-->", note))
}

#[derive(Deserialize)]
struct SignIn {
    name: String,
    password: String,
}

async fn sign_in(State(g): State<Guard>, Form(f): Form<SignIn>) -> Response {
    let Some(users) = g.users.clone() else {
        return Redirect::to("/signin").into_response();
    };
    let name = f.name.clone();
    let ok = tokio::task::spawn_blocking(move || users.verify(&f.name, &f.password))
        .await
        .unwrap_or(false);
    if !ok {
        tracing::warn!(name = %name, "dashboard sign-in refused");
        return Redirect::to("/signin?refused=1").into_response();
    }
    let Some(token) = g.sessions.open(&name) else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "no randomness for a session",
        )
            .into_response();
    };
    tracing::info!(name = %name, "signed in to the dashboard");
    let cookie = format!(
        "{COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}",
        SESSION.as_secs()
    );
    ([(header::SET_COOKIE, cookie)], Redirect::to("/")).into_response()
}

async fn sign_out(State(g): State<Guard>, headers: HeaderMap) -> Response {
    if let Some(t) = token(&headers) {
        g.sessions.close(&t);
    }
    let clear = format!("{COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0");
    ([(header::SET_COOKIE, clear)], Redirect::to("/signin")).into_response()
}
