//! The one layout every page shares, and the small components pages are built from.

use axum::response::{IntoResponse, Response};
use maud::{DOCTYPE, Markup, html};

use crate::Viewer;

/// The pages in the navigation: (path, label).
pub const NAV: [(&str, &str); 8] = [
    ("/", "Overview"),
    ("/workloads", "Workloads"),
    ("/nodes", "Nodes"),
    ("/network", "Network"),
    ("/recommendations", "Recommendations"),
    ("/policies", "Policies"),
    ("/sql", "SQL"),
    ("/settings", "Settings"),
];

/// A whole document: head with the embedded CSS and htmx, navigation, the page's content.
/// Every htmx request carries the session's CSRF token (`hx-headers` on `body`).
pub fn page(viewer: Option<&Viewer>, active: &str, title: &str, content: Markup) -> Markup {
    let csrf =
        viewer.map(|v| serde_json::json!({ crate::auth::CSRF_HEADER: v.session.csrf }).to_string());
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                // 422 (a form with errors) is swapped in like a success, so errors show next to fields.
                meta name="htmx-config" content=r#"{"includeIndicatorStyles":false,"responseHandling":[{"code":"204","swap":false},{"code":"[23]..","swap":true},{"code":"422","swap":true},{"code":"[45]..","swap":false,"error":true}]}"#;
                title { (title) " · Tally" }
                link rel="stylesheet" href="/assets/tally.css";
                script src="/assets/htmx.min.js" defer {}
                script src="/assets/tally.js" defer {}
            }
            body hx-headers=[csrf] {
                a.skip href="#main" { "Skip to content" }
                header.top {
                    a.brand href="/" { "Tally" }
                    @if let Some(viewer) = viewer {
                        nav aria-label="Pages" {
                            ul {
                                @for (path, label) in NAV {
                                    li {
                                        a href=(path) aria-current=[(path == active).then_some("page")] { (label) }
                                    }
                                }
                            }
                        }
                        form.signout method="post" action="/sign-out" {
                            input type="hidden" name="csrf" value=(viewer.session.csrf);
                            span.user { (viewer.session.user) }
                            button type="submit" { "Sign out" }
                        }
                    }
                }
                main #main { (content) }
            }
        }
    }
}

/// A page's answer: the whole document, or only the content for htmx requests that target
/// `#main`.
pub fn respond(viewer: &Viewer, active: &str, title: &str, content: Markup) -> Response {
    if viewer.htmx {
        content.into_response()
    } else {
        page(Some(viewer), active, title, content).into_response()
    }
}

/// A headline number with its label and an explanation.
pub fn stat(label: &str, value: &str, note: &str) -> Markup {
    html! {
        div.stat {
            div.label { (label) }
            div.value { (value) }
            @if !note.is_empty() { div.note { (note) } }
        }
    }
}

/// A section with a heading.
pub fn card(title: &str, content: Markup) -> Markup {
    html! {
        section.card {
            h2 { (title) }
            (content)
        }
    }
}

/// Says plainly that something is not there yet and what would bring it.
pub fn not_yet(what: &str, why: &str) -> Markup {
    html! {
        p.notyet role="note" { strong { (what) } " " (why) }
    }
}

/// An empty state: what is missing and what to do.
pub fn empty(what: &str, todo: &str) -> Markup {
    html! {
        div.empty { p { strong { (what) } } p { (todo) } }
    }
}

/// Names the query files behind a page's numbers.
pub fn sources(queries: &[&tally_queries::Query]) -> Markup {
    html! {
        p.sources {
            "Numbers on this page come from "
            @for (i, q) in queries.iter().enumerate() {
                @if i > 0 { ", " }
                code { "queries/" (q.name) ".sql" }
            }
            "."
        }
    }
}

/// An error reading a page's data, shown in place of the data.
pub fn data_error(error: &crate::data::DataError) -> Markup {
    html! { p.error role="alert" { "Could not read this: " (error.to_string()) } }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_layout_has_navigation_skip_link_and_language() {
        let page = page(None, "/", "Sign in", html! { p { "x" } }).into_string();
        assert!(page.starts_with("<!DOCTYPE html>"));
        assert!(page.contains(r#"<html lang="en">"#));
        assert!(page.contains(r##"href="#main""##));
        assert!(page.contains("/assets/htmx.min.js"));
    }
}
