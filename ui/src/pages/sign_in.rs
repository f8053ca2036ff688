//! Sign-in: a Kubernetes token form (TokenReview + SubjectAccessReview), the demo's one-time
//! link, and sign-out.

use std::collections::HashMap;

use axum::Form;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use maud::html;

use crate::auth::{self, AuthError, SESSION_COOKIE, SESSION_SECONDS, SIGN_IN_COOKIE, SignIn};
use crate::layout;
use crate::{UiState, Viewer};

fn cookie(state: &UiState, name: &str, value: &str, max_age: i64) -> String {
    let secure = if state.auth.secure_cookies {
        "; Secure"
    } else {
        ""
    };
    format!("{name}={value}; Path=/; HttpOnly; SameSite=Lax; Max-Age={max_age}{secure}")
}

fn form_page(state: &UiState, error: Option<&str>, status: StatusCode) -> Response {
    let csrf = state.auth.random();
    let body = html! {
        section.card.narrow {
            h1 { "Sign in to Tally" }
            @match &state.auth.sign_in {
                SignIn::OneTimeLink => {
                    p { "This is the demo: open the one-time sign-in link that " code { "tally demo" } " printed when it started. Each link works once; restart the demo for a new one." }
                }
                SignIn::Unconfigured => {
                    p.error role="alert" { (AuthError::Unconfigured.to_string()) }
                }
                SignIn::Kubernetes(k8s) => {
                    p { "Paste a Kubernetes bearer token. Tally asks the API server at " code { (k8s.api_server) } " who it belongs to (TokenReview) and what cluster RBAC lets you do (SubjectAccessReview): viewing needs " code { "list pods" } " in every namespace, approving needs " code { "update workloadrecommendations.tally.dev" } ", editing policies " code { "update policies.tally.dev" } "." }
                    p.hint { "For example: " code { "kubectl create token my-user" } }
                    form method="post" action="/sign-in" {
                        input type="hidden" name="csrf" value=(csrf);
                        div.field {
                            label for="token" { "Bearer token" }
                            textarea #token name="token" rows="4" required autocomplete="off" spellcheck="false"
                                aria-invalid=[error.map(|_| "true")] aria-describedby=[error.map(|_| "token-error")] {}
                            @if let Some(error) = error {
                                p.field-error #token-error role="alert" { (error) }
                            }
                        }
                        button type="submit" { "Sign in" }
                    }
                }
            }
            @if let (Some(error), false) = (error, matches!(state.auth.sign_in, SignIn::Kubernetes(_))) {
                p.error role="alert" { (error) }
            }
        }
    };
    (
        status,
        [(
            header::SET_COOKIE,
            cookie(state, SIGN_IN_COOKIE, &csrf, 3600),
        )],
        layout::page(None, "", "Sign in", body),
    )
        .into_response()
}

/// `GET /sign-in`.
pub async fn page(State(state): State<UiState>) -> Response {
    form_page(&state, None, StatusCode::OK)
}

fn signed_in(state: &UiState, session: &auth::Session) -> Response {
    (
        [(
            header::SET_COOKIE,
            cookie(
                state,
                SESSION_COOKIE,
                &state.auth.seal(session),
                SESSION_SECONDS,
            ),
        )],
        Redirect::to("/"),
    )
        .into_response()
}

/// `POST /sign-in` with a token (and the sign-in form's CSRF token, double-submitted).
pub async fn with_token(
    State(state): State<UiState>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let expected = auth::cookie(&headers, SIGN_IN_COOKIE);
    let sent = form.get("csrf").map(String::as_str);
    match (expected, sent) {
        (Some(a), Some(b)) if auth::constant_time_eq(a.as_bytes(), b.as_bytes()) => {}
        _ => {
            return form_page(
                &state,
                Some("the sign-in form expired; try again"),
                StatusCode::FORBIDDEN,
            );
        }
    }
    let token = form.get("token").map(String::as_str).unwrap_or("").trim();
    if token.is_empty() {
        return form_page(&state, Some("paste a token"), StatusCode::BAD_REQUEST);
    }
    match state.auth.sign_in_with_token(token).await {
        Ok(session) => {
            tracing::info!(user = %session.user, "signed in");
            signed_in(&state, &session)
        }
        Err(error) => {
            let status = match error {
                AuthError::Forbidden { .. } => StatusCode::FORBIDDEN,
                AuthError::Unauthenticated => StatusCode::UNAUTHORIZED,
                _ => StatusCode::BAD_GATEWAY,
            };
            form_page(&state, Some(&error.to_string()), status)
        }
    }
}

/// `GET /sign-in/link?token=…`: the demo's one-time link.
pub async fn with_link(
    State(state): State<UiState>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let token = query.get("token").map(String::as_str).unwrap_or("");
    match state.auth.redeem_link(token) {
        Ok(session) => signed_in(&state, &session),
        Err(error) => form_page(&state, Some(&error.to_string()), StatusCode::FORBIDDEN),
    }
}

/// `POST /sign-out`.
pub async fn sign_out(
    State(state): State<UiState>,
    viewer: Viewer,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    if let Err(refused) = viewer.check_csrf(&headers, form.get("csrf").map(String::as_str)) {
        return *refused;
    }
    (
        [(header::SET_COOKIE, cookie(&state, SESSION_COOKIE, "", 0))],
        Redirect::to("/sign-in"),
    )
        .into_response()
}
