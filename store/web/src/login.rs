//! Logging in and out. The login form is protected against cross-site posts by a double
//! submit (a random value in a `__Host-` cookie that the form must repeat), every other form
//! by its session's CSRF token. Attempts are limited per name and per address before any
//! Argon2 runs; every attempt and logout goes to the audit log.

use std::sync::Arc;

use axum::extract::{Extension, Form, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect};
use serde::Deserialize;

use crate::audit::AuditEvent;
use crate::pages;
use crate::session::csrf_matches;
use crate::state::{cookie, set_cookie, Answer, App, Failure, Peer, LOGIN_COOKIE, SESSION_COOKIE};
use crate::users::MAX_PASSWORD_BYTES;

/// How long the login form's cookie lives (seconds).
const LOGIN_FORM_SECONDS: u64 = 3600;

/// The login form's fields.
#[derive(Deserialize)]
pub struct LoginForm {
    user: String,
    password: String,
    csrf: String,
}

/// A form carrying only its CSRF token (logout).
#[derive(Deserialize)]
pub struct CsrfForm {
    csrf: String,
}

fn random_hex() -> Result<String, Failure> {
    let mut t = [0u8; 32];
    getrandom::fill(&mut t).map_err(|e| Failure::internal("random bytes", e))?;
    Ok(t.iter().map(|b| format!("{b:02x}")).collect())
}

fn login_page(status: StatusCode, message: Option<&str>) -> Answer {
    let token = random_hex()?;
    Ok((
        status,
        [(
            header::SET_COOKIE,
            set_cookie(LOGIN_COOKIE, &token, LOGIN_FORM_SECONDS),
        )],
        Html(pages::login(&token, message).into_string()),
    )
        .into_response())
}

/// `GET /login`: the form (or, when logged in already, the hosts).
pub async fn form(State(app): State<Arc<App>>, headers: HeaderMap) -> Answer {
    if app.session(&headers)?.is_some() {
        return Ok(Redirect::to("/hosts").into_response());
    }
    login_page(StatusCode::OK, None)
}

/// `POST /login`.
pub async fn submit(
    State(app): State<Arc<App>>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    form: Result<Form<LoginForm>, axum::extract::rejection::FormRejection>,
) -> Answer {
    let Ok(Form(form)) = form else {
        return Err(Failure::new(
            StatusCode::BAD_REQUEST,
            "the login form was incomplete",
        ));
    };
    let address = peer.address(&headers);
    let sent = cookie(&headers, LOGIN_COOKIE).unwrap_or_default();
    if sent.len() != 64
        || !constant_time_eq::constant_time_eq(sent.as_bytes(), form.csrf.as_bytes())
    {
        return Err(Failure::new(
            StatusCode::FORBIDDEN,
            "the login form is stale or came from another site: reload the login page",
        ));
    }
    let now = xstore::now_ns();
    let failed = |reason: &str| AuditEvent::Login {
        user: form.user.clone(),
        ok: false,
        reason: Some(reason.to_string()),
    };
    if let Err(wait) = app.limiter.check(&form.user, address, now) {
        app.audit(address, failed("rate limited"));
        let mut page = login_page(
            StatusCode::TOO_MANY_REQUESTS,
            Some(&format!(
                "too many attempts: try again in {} s",
                wait.seconds()
            )),
        )?;
        if let Ok(v) = wait.seconds().to_string().parse() {
            page.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return Ok(page);
    }
    if form.password.len() > MAX_PASSWORD_BYTES {
        app.limiter.failed(&form.user, address, now);
        app.audit(address, failed("password too long"));
        return login_page(
            StatusCode::UNAUTHORIZED,
            Some("wrong user name or password"),
        );
    }
    // Argon2 takes tens of milliseconds: off the async workers.
    let users = app.users()?;
    let (name, password) = (form.user.clone(), form.password);
    let user = tokio::task::spawn_blocking(move || users.verify(&name, &password).cloned())
        .await
        .map_err(|e| Failure::internal("checking a password", e))?;
    let Some(user) = user else {
        app.limiter.failed(&form.user, address, now);
        app.audit(address, failed("wrong user name or password"));
        return login_page(
            StatusCode::UNAUTHORIZED,
            Some("wrong user name or password"),
        );
    };
    app.limiter.succeeded(&user.name);
    let session = app
        .sessions
        .create(&user, now)
        .map_err(|e| Failure::internal("random bytes", e))?;
    app.audit(
        address,
        AuditEvent::Login {
            user: user.name.clone(),
            ok: true,
            reason: None,
        },
    );
    let lifetime = app_lifetime_seconds(&app);
    let mut response = Redirect::to("/hosts").into_response();
    let headers = response.headers_mut();
    for value in [
        set_cookie(SESSION_COOKIE, &session.token, lifetime),
        set_cookie(LOGIN_COOKIE, "", 0),
    ] {
        if let Ok(v) = value.parse() {
            headers.append(header::SET_COOKIE, v);
        }
    }
    Ok(response)
}

fn app_lifetime_seconds(app: &App) -> u64 {
    app.sessions.rules().lifetime().as_secs()
}

/// `POST /logout`: ends the session when the form carries its CSRF token.
pub async fn logout(
    State(app): State<Arc<App>>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    form: Result<Form<CsrfForm>, axum::extract::rejection::FormRejection>,
) -> Answer {
    let Some(user) = app.session(&headers)? else {
        return Ok(Redirect::to("/login").into_response());
    };
    let sent = form.map(|Form(f)| f.csrf).unwrap_or_default();
    if !csrf_matches(&user, &sent) {
        return Err(Failure::new(
            StatusCode::FORBIDDEN,
            "the form is stale or came from another site: reload the page",
        ));
    }
    if let Some(token) = cookie(&headers, SESSION_COOKIE) {
        app.sessions.end(&token);
    }
    app.audit(
        peer.address(&headers),
        AuditEvent::Logout {
            user: user.name.clone(),
        },
    );
    let mut response = Redirect::to("/login").into_response();
    if let Ok(v) = set_cookie(SESSION_COOKIE, "", 0).parse() {
        response.headers_mut().insert(header::SET_COOKIE, v);
    }
    Ok(response)
}
