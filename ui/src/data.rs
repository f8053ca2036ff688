//! Reading the pages' queries: a query file rendered with its parameters, run through the
//! read-only engine, answered as rows addressed by column name.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde_json::Value;
use tally_queries::{Param, Query};

/// What can go wrong reading a page's data.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("query {query}: {source}")]
    Render {
        query: &'static str,
        #[source]
        source: tally_queries::RenderError,
    },
    #[error("query {query}: {source}")]
    Query {
        query: &'static str,
        #[source]
        source: tally_query::QueryError,
    },
}

/// A query's answer.
#[derive(Debug, Default)]
pub struct Rows {
    columns: HashMap<String, usize>,
    pub rows: Vec<Vec<Value>>,
}

/// One row with access by column name.
#[derive(Clone, Copy)]
pub struct Row<'a> {
    columns: &'a HashMap<String, usize>,
    values: &'a [Value],
}

impl Rows {
    pub fn iter(&self) -> impl Iterator<Item = Row<'_>> {
        self.rows.iter().map(|values| Row {
            columns: &self.columns,
            values,
        })
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
}

impl<'a> Row<'a> {
    pub fn value(&self, column: &str) -> &'a Value {
        self.columns
            .get(column)
            .and_then(|&i| self.values.get(i))
            .unwrap_or(&Value::Null)
    }

    pub fn text(&self, column: &str) -> &'a str {
        self.value(column).as_str().unwrap_or("")
    }

    pub fn opt_text(&self, column: &str) -> Option<&'a str> {
        self.value(column).as_str()
    }

    pub fn float(&self, column: &str) -> Option<f64> {
        self.value(column).as_f64()
    }

    pub fn int(&self, column: &str) -> Option<i64> {
        self.value(column).as_i64()
    }

    pub fn time(&self, column: &str) -> Option<DateTime<Utc>> {
        self.value(column)
            .as_str()
            .and_then(crate::format::parse_time)
    }
}

/// Runs a query file with its parameters; every row of the answer.
pub async fn run(
    engine: &tally_query::QueryEngine,
    query: &Query,
    params: &[(&str, Param)],
) -> Result<Rows, DataError> {
    let sql = query.render(params).map_err(|source| DataError::Render {
        query: query.name,
        source,
    })?;
    let wrap = |source| DataError::Query {
        query: query.name,
        source,
    };
    let (schema, batches) = engine.collect(&sql).await.map_err(wrap)?;
    let answer = tally_query::batches_to_json(&schema, &batches, usize::MAX).map_err(wrap)?;
    Ok(Rows {
        columns: answer
            .columns
            .iter()
            .enumerate()
            .map(|(i, c)| (c.name.clone(), i))
            .collect(),
        rows: answer.rows,
    })
}

/// The window parameters for the last `days` days up to `end`.
pub fn window(end: DateTime<Utc>, days: i64) -> [(&'static str, Param); 2] {
    [
        (
            "window_start",
            Param::Timestamp(end - chrono::Duration::days(days)),
        ),
        ("window_end", Param::Timestamp(end)),
    ]
}
