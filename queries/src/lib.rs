//! Every analysis Tally runs is a `.sql` file in this folder: readable, parameterised with
//! `$name` placeholders, and pinned by a golden test on small hand-made data (`golden/`).
//! Find any number on a page by following one of these files.

use chrono::{DateTime, SecondsFormat, Utc};

/// A query file and what it needs.
#[derive(Debug, Clone, Copy)]
pub struct Query {
    pub name: &'static str,
    pub sql: &'static str,
    pub params: &'static [&'static str],
}

/// Declares a query from `queries/<name>.sql` with the `$parameters` it takes.
#[macro_export]
macro_rules! query {
    ($name:literal, [$($param:literal),*]) => {
        $crate::Query {
            name: $name,
            sql: include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/", $name, ".sql")),
            params: &[$($param),*],
        }
    };
}

pub const CONTAINER_PERCENTILES_HOURLY: Query = query!(
    "container_percentiles_hourly",
    ["window_start", "window_end"]
);
pub const CONTAINER_PERCENTILES_RAW: Query =
    query!("container_percentiles_raw", ["window_start", "window_end"]);

/// The usage queries above; each area keeps its own list in its module.
pub const USAGE: &[Query] = &[CONTAINER_PERCENTILES_HOURLY, CONTAINER_PERCENTILES_RAW];

/// Rightsizing, replicas, consolidation, instance types and cost allocation.
pub mod analysis;
/// Network traffic: destinations, classes and cost.
pub mod network;
/// What the web UI's pages and the SQL console's examples read.
pub mod ui;

/// Every query of every area.
pub fn all() -> impl Iterator<Item = &'static Query> {
    USAGE
        .iter()
        .chain(analysis::ALL)
        .chain(ui::ALL)
        .chain(network::ALL)
}

/// A typed parameter value, rendered as a SQL literal.
#[derive(Debug, Clone, PartialEq)]
pub enum Param {
    Timestamp(DateTime<Utc>),
    Float(f64),
    Int(i64),
    Text(String),
}

impl Param {
    fn literal(&self) -> String {
        match self {
            Param::Timestamp(t) => format!(
                "TIMESTAMP '{}'",
                t.to_rfc3339_opts(SecondsFormat::Millis, true)
            ),
            Param::Float(v) => format!("{v:?}"),
            Param::Int(v) => v.to_string(),
            Param::Text(s) => format!("'{}'", s.replace('\'', "''")),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RenderError {
    #[error("query `{query}` needs parameter `${param}`")]
    Missing {
        query: &'static str,
        param: &'static str,
    },
    #[error("query `{query}` has no parameter `${param}`")]
    Unknown { query: &'static str, param: String },
}

impl Query {
    /// The SQL with every `$name` replaced by its value's literal.
    pub fn render(&self, values: &[(&str, Param)]) -> Result<String, RenderError> {
        for (name, _) in values {
            if !self.params.contains(name) {
                return Err(RenderError::Unknown {
                    query: self.name,
                    param: name.to_string(),
                });
            }
        }
        let mut sql = self.sql.to_string();
        // Longest names first, so `$window` never eats the start of `$window_start`.
        let mut params: Vec<_> = self.params.to_vec();
        params.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for param in params {
            let value = values
                .iter()
                .find(|(name, _)| *name == param)
                .map(|(_, v)| v)
                .ok_or(RenderError::Missing {
                    query: self.name,
                    param,
                })?;
            sql = sql.replace(&format!("${param}"), &value.literal());
        }
        Ok(sql)
    }
}

#[cfg(test)]
pub(crate) mod golden;
#[cfg(test)]
mod golden_analysis;
#[cfg(test)]
mod golden_network;
#[cfg(test)]
mod golden_ui;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_placeholder_is_declared_and_every_declared_one_used() {
        for query in all() {
            for param in query.params {
                assert!(
                    query.sql.contains(&format!("${param}")),
                    "{} does not use ${param}",
                    query.name
                );
            }
            let mut rest = query.sql;
            while let Some(at) = rest.find('$') {
                let name: String = rest[at + 1..]
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                assert!(
                    query.params.contains(&name.as_str()),
                    "{} uses undeclared ${name}",
                    query.name
                );
                rest = &rest[at + 1..];
            }
        }
    }

    #[test]
    fn rendering_quotes_values_and_names_what_is_missing() {
        let t = DateTime::parse_from_rfc3339("2026-01-02T03:04:05Z")
            .unwrap()
            .with_timezone(&Utc);
        let sql = CONTAINER_PERCENTILES_RAW
            .render(&[
                ("window_start", Param::Timestamp(t)),
                ("window_end", Param::Timestamp(t)),
            ])
            .unwrap();
        assert!(
            sql.contains("time >= TIMESTAMP '2026-01-02T03:04:05.000Z'"),
            "{sql}"
        );
        assert_eq!(
            CONTAINER_PERCENTILES_RAW
                .render(&[("window_start", Param::Timestamp(t))])
                .unwrap_err(),
            RenderError::Missing {
                query: "container_percentiles_raw",
                param: "window_end"
            }
        );
        assert_eq!(Param::Text("it's".into()).literal(), "'it''s'");
    }
}
