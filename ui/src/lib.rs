//! Tally's web UI: maud pages, htmx fragments and SVG charts over the read-only query engine; htmx and CSS vendored and embedded.
