//! Policies: what each covers, and a form to create or edit one with the errors shown next
//! to their fields. Kept by the appliance (a file in its data directory); the operator enforces
//! the cluster's Policy resources instead, which this page does not write yet.

use std::collections::HashMap;

use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};

use crate::format;
use crate::layout::{self, card};
use crate::policy::{self, FieldErrors};
use crate::{UiState, Viewer};

const STORED_HERE: &str = "Policies on this page are kept by the appliance (a file in its data directory), for review and for the demo. The operator does not read them: it enforces the cluster's Policy resources (policies.tally.dev, examples in the chart's helm/examples), which you create with kubectl; this page does not write those yet.";

fn field(
    form: &policy::Form,
    errors: &FieldErrors,
    name: &'static str,
    label: &str,
    hint: &str,
    input: impl Fn(&str, Option<&str>) -> Markup,
) -> Markup {
    let value = form.get(name).map(String::as_str).unwrap_or("");
    let error = errors.get(name);
    let described = match (error.is_some(), hint.is_empty()) {
        (true, _) => Some(format!("{name}-error")),
        (false, false) => Some(format!("{name}-hint")),
        (false, true) => None,
    };
    html! {
        div.field.invalid[error.is_some()] {
            label for=(name) { (label) }
            (input(value, described.as_deref()))
            @if let Some(error) = error {
                p.field-error #(format!("{name}-error")) role="alert" { (label) " " (error) }
            } @else if !hint.is_empty() {
                p.hint #(format!("{name}-hint")) { (hint) }
            }
        }
    }
}

fn text_input<'a>(
    name: &'static str,
    errors: &'a FieldErrors,
    kind: &'static str,
) -> impl Fn(&str, Option<&str>) -> Markup + 'a {
    move |value, described| {
        let invalid = errors.contains_key(name);
        html! {
            input #(name) type=(kind) name=(name) value=(value) step=[(kind == "number").then_some("any")]
                aria-invalid=[invalid.then_some("true")] aria-describedby=[described];
        }
    }
}

/// The form: on an existing policy the name is fixed.
pub fn form(viewer: &Viewer, values: &policy::Form, errors: &FieldErrors, editing: bool) -> Markup {
    let mode = values.get("mode").map(String::as_str).unwrap_or("audit");
    html! {
        form #policy-form.policy method="post" action="/policies" hx-post="/policies" hx-target="this" hx-swap="outerHTML" novalidate {
            input type="hidden" name="csrf" value=(viewer.session.csrf);
            @if !errors.is_empty() {
                p.error role="alert" { "The policy was not saved: " (errors.len()) " field" @if errors.len() != 1 { "s need" } @else { " needs" } " fixing." }
            }
            @if editing {
                input type="hidden" name="name" value=(values.get("name").map(String::as_str).unwrap_or(""));
                p { "Policy " code { (values.get("name").map(String::as_str).unwrap_or("")) } }
            } @else {
                (field(values, errors, "name", "Name", "lower-case letters, digits and '-'", text_input("name", errors, "text")))
            }
            (field(values, errors, "namespaces", "Namespaces", "comma-separated; * for every namespace", text_input("namespaces", errors, "text")))
            (field(values, errors, "mode", "Mode", "audit only recommends; auto applies inside the window", |value, described| html! {
                select #mode name="mode" aria-describedby=[described] aria-invalid=[errors.contains_key("mode").then_some("true")] {
                    option value="audit" selected[value == "audit"] { "audit" }
                    option value="auto" selected[value == "auto"] { "auto" }
                    @if value != "audit" && value != "auto" { option value=(value) selected { (value) } }
                }
            }))
            fieldset {
                legend { "CPU request bounds (cores)" }
                (field(values, errors, "min_cpu_cores", "Minimum CPU", "", text_input("min_cpu_cores", errors, "number")))
                (field(values, errors, "max_cpu_cores", "Maximum CPU", "", text_input("max_cpu_cores", errors, "number")))
            }
            fieldset {
                legend { "Memory request bounds (MiB)" }
                (field(values, errors, "min_memory_mib", "Minimum memory", "", text_input("min_memory_mib", errors, "number")))
                (field(values, errors, "max_memory_mib", "Maximum memory", "", text_input("max_memory_mib", errors, "number")))
            }
            (field(values, errors, "cpu_percentile", "CPU percentile", "50–100; recommendations cover this percentile of usage", text_input("cpu_percentile", errors, "number")))
            (field(values, errors, "memory_margin_percent", "Memory margin (%)", "0–100; headroom over peak memory", text_input("memory_margin_percent", errors, "number")))
            fieldset {
                legend { "When changes may be applied (UTC)" }
                (field(values, errors, "window_start", "From", "HH:MM", text_input("window_start", errors, "text")))
                (field(values, errors, "window_end", "To", "HH:MM", text_input("window_end", errors, "text")))
            }
            p.hint { (STORED_HERE) }
            button type="submit" { @if editing { "Save changes" } @else { "Create policy" } }
            " " a href="/policies" { "Cancel" }
            @if mode == "auto" { p.hint { "auto mode takes effect only through a Policy resource in the cluster, which the operator enforces." } }
        }
    }
}

fn forbidden() -> Response {
    (
        StatusCode::FORBIDDEN,
        "editing policies needs `update policies.tally.dev` in cluster RBAC",
    )
        .into_response()
}

/// `GET /policies`: every policy and what it covers.
pub async fn page(
    State(state): State<UiState>,
    viewer: Viewer,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let policies = state.policies.list();
    let summary = state.summary.get(&state).await;
    let content = html! {
        h1 { "Policies" }
        @if let Some(saved) = query.get("saved") { p.notice role="status" { "Saved policy " code { (saved) } "." } }
        p.lead { "A policy says which workloads Tally may change, within which bounds, how (audit or auto), and when." }
        (layout::not_yet("Stored by the appliance:", STORED_HERE))
        @if viewer.session.permissions.admin {
            p { a.button href="/policies/new" { "New policy" } }
        } @else {
            p.hint { "You may view policies; editing needs " code { "update policies.tally.dev" } " in cluster RBAC." }
        }
        @if policies.is_empty() {
            (layout::empty("No policies yet.", "Without a policy Tally only recommends. Create one to say which namespaces may be changed and within which bounds."))
        } @else {
            (card("Policies", html! {
                table.data {
                    thead { tr {
                        th scope="col" { "Name" } th scope="col" { "Namespaces" } th scope="col" { "Mode" }
                        th scope="col" { "CPU" } th scope="col" { "Memory" } th scope="col" { "Targets" } th scope="col" { "Window (UTC)" } th.n scope="col" { "Covers" }
                    } }
                    tbody {
                        @for p in &policies {
                            tr {
                                td { @if viewer.session.permissions.admin { a href=(format!("/policies/{}", format::encode(&p.name))) { (p.name) } } @else { (p.name) } }
                                td { (p.namespaces.join(", ")) }
                                td { (p.mode) }
                                td { (p.min_cpu_cores) "–" (p.max_cpu_cores) " cores" }
                                td { (p.min_memory_mib) "–" (p.max_memory_mib) " MiB" }
                                td { "CPU p" (p.cpu_percentile) ", memory +" (p.memory_margin_percent) " %" }
                                td { (p.window_start) "–" (p.window_end) }
                                td.n {
                                    @if let Some(s) = &summary {
                                        (format::count(s.workloads.iter().filter(|w| p.covers(&w.namespace)).count() as u64)) " workloads"
                                    } @else { "…" }
                                }
                            }
                        }
                    }
                }
            }))
        }
    };
    layout::respond(&viewer, "/policies", "Policies", content)
}

/// `GET /policies/new`.
pub async fn new_form(viewer: Viewer) -> Response {
    if !viewer.session.permissions.admin {
        return forbidden();
    }
    let content = html! {
        h1 { "New policy" }
        (form(&viewer, &policy::new_form(), &FieldErrors::new(), false))
    };
    layout::respond(&viewer, "/policies", "New policy", content)
}

/// `GET /policies/{name}`: edit one.
pub async fn edit_form(
    State(state): State<UiState>,
    viewer: Viewer,
    Path(name): Path<String>,
) -> Response {
    if !viewer.session.permissions.admin {
        return forbidden();
    }
    let Some(existing) = state.policies.get(&name) else {
        let mut response = layout::respond(
            &viewer,
            "/policies",
            "Policies",
            layout::empty(
                &format!("There is no policy called {name}."),
                "Pick one from the Policies page.",
            ),
        );
        *response.status_mut() = StatusCode::NOT_FOUND;
        return response;
    };
    let content = html! {
        h1 { "Edit policy " code { (name) } }
        (form(&viewer, &policy::to_form(&existing), &FieldErrors::new(), true))
    };
    layout::respond(&viewer, "/policies", "Edit policy", content)
}

/// `POST /policies`: validate, then store; errors go back next to their fields (422).
pub async fn save(
    State(state): State<UiState>,
    viewer: Viewer,
    headers: HeaderMap,
    Form(values): Form<policy::Form>,
) -> Response {
    if let Err(refused) = viewer.check_csrf(&headers, values.get("csrf").map(String::as_str)) {
        return *refused;
    }
    if !viewer.session.permissions.admin {
        return forbidden();
    }
    let editing = values
        .get("name")
        .is_some_and(|n| state.policies.get(n.trim()).is_some());
    match policy::validate(&values) {
        Ok(policy) => {
            let name = policy.name.clone();
            if let Err(error) = state.policies.put(policy) {
                return (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("could not store the policy: {error}"),
                )
                    .into_response();
            }
            tracing::info!(user = %viewer.session.user, policy = %name, "policy saved");
            let to = format!("/policies?saved={}", format::encode(&name));
            if viewer.htmx {
                ([("HX-Redirect", to)], StatusCode::OK).into_response()
            } else {
                Redirect::to(&to).into_response()
            }
        }
        Err(errors) => {
            let markup = form(&viewer, &values, &errors, editing);
            if viewer.htmx {
                (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
                    markup.into_string(),
                )
                    .into_response()
            } else {
                let content =
                    html! { h1 { @if editing { "Edit policy" } @else { "New policy" } } (markup) };
                let mut response = layout::respond(&viewer, "/policies", "Policy", content);
                *response.status_mut() = StatusCode::UNPROCESSABLE_ENTITY;
                response
            }
        }
    }
}
