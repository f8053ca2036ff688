use std::time::Duration;

use datafusion::error::DataFusionError;
use datafusion::sql::sqlparser::parser::ParserError;

/// A line and column in the submitted SQL, both counted from 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Position {
    pub line: u64,
    pub column: u64,
}

/// Why a statement was not answered. [`QueryError::kind`] is the stable code for JSON answers;
/// the `Display` text is meant for the person who wrote the query.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The statement is not on the read-only allow-list (writes, DDL, settings, file access,
    /// several statements).
    #[error("{statement_kind} is not allowed: {reason}")]
    Refused {
        /// What was refused, in SQL words: `INSERT`, `CREATE EXTERNAL TABLE`, `read_parquet`, …
        statement_kind: String,
        reason: String,
    },

    /// The SQL does not parse.
    #[error("syntax error: {message}")]
    Syntax {
        message: String,
        position: Option<Position>,
    },

    /// The SQL parses but cannot be planned: unknown table or column, type mismatch,
    /// unsupported feature.
    #[error("{message}")]
    Plan {
        message: String,
        position: Option<Position>,
    },

    /// The query needed more memory than the SQL memory pool holds (nothing spills to disk).
    #[error(
        "the query needs more memory than the SQL memory limit allows ({0}); add filters, aggregate more or select fewer columns"
    )]
    ResourcesExhausted(String),

    /// The query (planning and streaming together) ran past the time limit.
    #[error("the query ran longer than the time limit of {0:?} and was cancelled")]
    Timeout(Duration),

    /// The query failed while running because of what it computes (division by zero,
    /// a failed cast, …).
    #[error("{0}")]
    Execution(String),

    /// The appliance failed to answer (I/O, storage or a bug); not the query's fault.
    #[error("internal error: {0}")]
    Internal(String),
}

impl QueryError {
    /// Where in the SQL the problem is, when known (for the console to point at it).
    pub fn position(&self) -> Option<Position> {
        match self {
            QueryError::Syntax { position, .. } | QueryError::Plan { position, .. } => *position,
            _ => None,
        }
    }

    /// A stable, machine-readable code.
    pub fn kind(&self) -> &'static str {
        match self {
            QueryError::Refused { .. } => "refused",
            QueryError::Syntax { .. } => "syntax",
            QueryError::Plan { .. } => "plan",
            QueryError::ResourcesExhausted(_) => "resources_exhausted",
            QueryError::Timeout(_) => "timeout",
            QueryError::Execution(_) => "execution",
            QueryError::Internal(_) => "internal",
        }
    }

    /// True when the query itself is at fault (an HTTP 4xx), false when the appliance is
    /// (an HTTP 5xx).
    pub fn is_client_error(&self) -> bool {
        !matches!(self, QueryError::Internal(_))
    }

    pub(crate) fn refused(statement_kind: impl Into<String>, reason: impl Into<String>) -> Self {
        QueryError::Refused {
            statement_kind: statement_kind.into(),
            reason: reason.into(),
        }
    }

    /// Sorts a DataFusion error into the variant the caller can act on.
    pub(crate) fn from_datafusion(error: DataFusionError) -> Self {
        let diagnostic_position = error
            .diagnostic()
            .and_then(|d| d.span)
            .filter(|span| span.start.line > 0)
            .map(|span| Position {
                line: span.start.line,
                column: span.start.column,
            });
        let root = error.find_root();
        match root {
            DataFusionError::SQL(parser_error, _) => syntax_error(parser_error),
            DataFusionError::ResourcesExhausted(message) => {
                QueryError::ResourcesExhausted(message.clone())
            }
            DataFusionError::Plan(_)
            | DataFusionError::SchemaError(..)
            | DataFusionError::NotImplemented(_)
            | DataFusionError::Configuration(_) => {
                let message = root.message().into_owned();
                let position = diagnostic_position.or_else(|| position_in(&message));
                QueryError::Plan { message, position }
            }
            DataFusionError::Execution(message) => QueryError::Execution(message.clone()),
            DataFusionError::ArrowError(arrow_error, _) => {
                use datafusion::arrow::error::ArrowError;
                match arrow_error.as_ref() {
                    ArrowError::IoError(..)
                    | ArrowError::ExternalError(_)
                    | ArrowError::IpcError(_) => QueryError::Internal(root.message().into_owned()),
                    other => QueryError::Execution(other.to_string()),
                }
            }
            _ => QueryError::Internal(root.message().into_owned()),
        }
    }
}

pub(crate) fn syntax_error(error: &ParserError) -> QueryError {
    let message = match error {
        ParserError::TokenizerError(m) | ParserError::ParserError(m) => m.clone(),
        ParserError::RecursionLimitExceeded => {
            "the statement nests too deeply (recursion limit exceeded)".to_string()
        }
    };
    let position = position_in(&message);
    QueryError::Syntax { message, position }
}

/// Finds sqlparser's `… at Line: 3, Column: 14` (the last one, if several).
pub(crate) fn position_in(message: &str) -> Option<Position> {
    let start = message.rfind("Line: ")?;
    let rest = &message[start + "Line: ".len()..];
    let (line, rest) = rest.split_once(", Column: ")?;
    let column: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    let line = line.trim().parse().ok()?;
    let column = column.parse().ok()?;
    (line > 0).then_some(Position { line, column })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_position_in_parser_messages() {
        assert_eq!(
            position_in("Expected: an expression, found: FROM at Line: 3, Column: 14"),
            Some(Position {
                line: 3,
                column: 14
            })
        );
        assert_eq!(position_in("no position here"), None);
        assert_eq!(position_in("Line: x, Column: 2"), None);
    }

    #[test]
    fn classifies_datafusion_errors() {
        let e = QueryError::from_datafusion(DataFusionError::ResourcesExhausted("pool".into()));
        assert_eq!(e.kind(), "resources_exhausted");
        let e = QueryError::from_datafusion(
            DataFusionError::ResourcesExhausted("pool".into()).context("while sorting"),
        );
        assert_eq!(e.kind(), "resources_exhausted");
        let e = QueryError::from_datafusion(DataFusionError::Plan("table 'x' not found".into()));
        assert_eq!(e.kind(), "plan");
        assert!(e.is_client_error());
        let e =
            QueryError::from_datafusion(DataFusionError::IoError(std::io::Error::other("disk")));
        assert_eq!(e.kind(), "internal");
        assert!(!e.is_client_error());
    }
}
