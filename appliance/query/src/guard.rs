//! The statement allow-list: the first line of defence, before anything is planned.
//!
//! One statement, parsed with DataFusion's parser, must be a query (`SELECT`, `WITH`,
//! `VALUES`, `TABLE`), `EXPLAIN [ANALYZE]` of a query, `SHOW TABLES`, `SHOW COLUMNS` or
//! `DESCRIBE <table>`. Inside it, no nested data-modifying statement, no `SELECT … INTO`, no
//! relation that names a file (`FROM '/etc/passwd'`) and no table function other than those
//! the engine registered (none of which reads files). The second line of defence is
//! DataFusion's `SQLOptions::verify_plan` with DDL, DML and statements all disallowed.

use std::collections::BTreeSet;
use std::ops::ControlFlow;

use datafusion::sql::parser::{DFParserBuilder, Statement as DFStatement};
use datafusion::sql::sqlparser::ast::{
    Expr, ObjectName, ObjectNamePart, Select, Statement, TableFactor, Visit, Visitor,
};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};

use crate::error::{QueryError, syntax_error};

const READ_ONLY: &str = "Tally's SQL is read-only; only SELECT, WITH, VALUES, EXPLAIN, SHOW TABLES, SHOW COLUMNS and DESCRIBE are allowed";
const ONLY_SHOW: &str = "only SHOW TABLES and SHOW COLUMNS are allowed (settings can be read from information_schema.df_settings)";
const NO_FILES: &str = "Tally's SQL reads only Tally's own tables and cannot read or write files (SHOW TABLES lists the tables; use the export endpoint to download results)";

/// How deeply expressions may nest (`1 + 1 + … + 1` nests once per term; so do nested
/// function calls and CASEs). Planning recurses once per level: a flat sum of 2,000 terms
/// overflowed a 2 MiB stack, and one of 6,400 terms planned for longer than 20 s even with
/// 32 MiB stacks. No hand-written or generated dashboard query comes near this.
pub const MAX_EXPRESSION_DEPTH: usize = 256;

/// Parses `sql` into exactly one statement and checks it against the allow-list.
/// `table_functions` are the names of the table functions the session registered.
pub(crate) fn parse_and_check(
    sql: &str,
    recursion_limit: usize,
    table_functions: &BTreeSet<String>,
) -> Result<DFStatement, QueryError> {
    let dialect = GenericDialect {};
    let mut statements = DFParserBuilder::new(sql)
        .with_dialect(&dialect)
        .with_recursion_limit(recursion_limit)
        .build()
        .and_then(|mut parser| parser.parse_statements())
        .map_err(|e| match e.find_root() {
            datafusion::error::DataFusionError::SQL(parser_error, _) => refused_by_first_word(sql)
                .unwrap_or_else(|| at_end_if_eof(syntax_error(parser_error), sql)),
            _ => QueryError::from_datafusion(e),
        })?;
    match statements.len() {
        0 => Err(QueryError::Syntax {
            message: "there is no statement to run".into(),
            position: None,
        }),
        1 => {
            let statement = statements.pop_front().expect("one statement");
            check(&statement, table_functions)?;
            Ok(statement)
        }
        n => Err(QueryError::refused(
            "more than one statement",
            format!("send exactly one statement per request (found {n})"),
        )),
    }
}

/// Statements that are refused whatever follows, so that `COPY t FROM '/etc/passwd'` (which
/// DataFusion's parser does not even accept) is refused rather than called a syntax error.
const NEVER_ALLOWED: &[&str] = &[
    "INSERT",
    "UPDATE",
    "DELETE",
    "MERGE",
    "UPSERT",
    "REPLACE",
    "CREATE",
    "DROP",
    "ALTER",
    "TRUNCATE",
    "COPY",
    "SET",
    "RESET",
    "PREPARE",
    "EXECUTE",
    "DEALLOCATE",
    "GRANT",
    "REVOKE",
    "ATTACH",
    "DETACH",
    "LOAD",
    "INSTALL",
    "VACUUM",
    "ANALYZE",
    "CALL",
    "BEGIN",
    "START",
    "COMMIT",
    "ROLLBACK",
    "USE",
    "UNLOAD",
    "PRAGMA",
    "EXPORT",
    "IMPORT",
    "PUT",
    "REMOVE",
    "RENAME",
    "COMMENT",
    "LOCK",
    "UNLOCK",
    "DECLARE",
    "KILL",
];

/// For SQL that does not parse: a refusal when it starts like a statement that is never
/// allowed.
fn refused_by_first_word(sql: &str) -> Option<QueryError> {
    let dialect = GenericDialect {};
    let tokens = Tokenizer::new(&dialect, sql).tokenize().ok()?;
    let words: Vec<String> = tokens
        .iter()
        .filter(|t| !matches!(t, Token::Whitespace(_)))
        .take(8)
        .map(|t| match t {
            Token::Word(w) => w.value.to_ascii_uppercase(),
            other => other.to_string(),
        })
        .collect();
    let first = words.first()?;
    if !NEVER_ALLOWED.contains(&first.as_str()) {
        return None;
    }
    if first == "COPY" {
        let direction = words.iter().skip(1).find(|w| *w == "FROM" || *w == "TO");
        let kind = direction.map_or_else(|| "COPY".to_string(), |d| format!("COPY {d}"));
        return Some(QueryError::refused(kind, NO_FILES));
    }
    let kind = leading_keywords(&words.join(" "));
    let reason = if matches!(first.as_str(), "SET" | "RESET") {
        "session settings cannot be changed from SQL"
    } else {
        READ_ONLY
    };
    Some(QueryError::refused(kind, reason))
}

/// sqlparser gives no position for an unexpected end of input; it is the end of the SQL.
fn at_end_if_eof(error: QueryError, sql: &str) -> QueryError {
    match error {
        QueryError::Syntax {
            message,
            position: None,
        } if message.contains("found: EOF") => {
            let trimmed = sql.trim_end();
            let line = trimmed.lines().count().max(1) as u64;
            let last = trimmed.rsplit('\n').next().unwrap_or("");
            let position = Some(crate::Position {
                line,
                column: last.chars().count() as u64 + 1,
            });
            QueryError::Syntax { message, position }
        }
        other => other,
    }
}

/// Checks one parsed statement against the allow-list.
pub(crate) fn check(
    statement: &DFStatement,
    table_functions: &BTreeSet<String>,
) -> Result<(), QueryError> {
    match statement {
        DFStatement::Statement(statement) => check_sql(statement, table_functions),
        DFStatement::Explain(explain) => match explain.statement.as_ref() {
            DFStatement::Statement(inner) if matches!(inner.as_ref(), Statement::Query(_)) => {
                check_sql(inner, table_functions)
            }
            other => Err(QueryError::refused(
                format!("EXPLAIN {}", df_statement_kind(other)),
                "EXPLAIN is allowed for queries only",
            )),
        },
        DFStatement::CreateExternalTable(_) => {
            Err(QueryError::refused("CREATE EXTERNAL TABLE", NO_FILES))
        }
        DFStatement::CopyTo(_) => Err(QueryError::refused("COPY TO", NO_FILES)),
        DFStatement::Reset(_) => Err(QueryError::refused(
            "RESET",
            "session settings cannot be changed from SQL",
        )),
    }
}

fn check_sql(statement: &Statement, table_functions: &BTreeSet<String>) -> Result<(), QueryError> {
    match statement {
        Statement::Query(_)
        | Statement::ShowTables { .. }
        | Statement::ShowColumns { .. }
        | Statement::ExplainTable { .. } => {}
        Statement::Explain {
            statement: inner, ..
        } if matches!(inner.as_ref(), Statement::Query(_)) => {}
        Statement::Explain {
            statement: inner, ..
        } => {
            return Err(QueryError::refused(
                format!("EXPLAIN {}", statement_kind(inner)),
                "EXPLAIN is allowed for queries only",
            ));
        }
        Statement::Copy { .. } => return Err(QueryError::refused("COPY", NO_FILES)),
        Statement::Set(_) | Statement::Reset(_) => {
            return Err(QueryError::refused(
                statement_kind(statement),
                "session settings cannot be changed from SQL",
            ));
        }
        other => {
            let kind = statement_kind(other);
            let reason = if kind.starts_with("SHOW") {
                ONLY_SHOW
            } else {
                READ_ONLY
            };
            return Err(QueryError::refused(kind, reason));
        }
    }
    let mut guard = Guard {
        depth: 0,
        expression_depth: 0,
        table_functions,
    };
    match statement.visit(&mut guard) {
        ControlFlow::Continue(()) => Ok(()),
        ControlFlow::Break(error) => Err(error),
    }
}

/// Walks every node of an allowed statement.
struct Guard<'a> {
    depth: usize,
    /// How many expressions enclose the one being visited.
    expression_depth: usize,
    table_functions: &'a BTreeSet<String>,
}

impl Visitor for Guard<'_> {
    type Break = QueryError;

    fn pre_visit_expr(&mut self, _expr: &Expr) -> ControlFlow<QueryError> {
        self.expression_depth += 1;
        if self.expression_depth > MAX_EXPRESSION_DEPTH {
            // Stop here: walking further would recurse as deep as the expression.
            return ControlFlow::Break(QueryError::refused(
                format!("an expression nested more than {MAX_EXPRESSION_DEPTH} levels deep"),
                "split it up (a long chain of + or OR nests once per term; IN (...) or a \
                 VALUES list does not)",
            ));
        }
        ControlFlow::Continue(())
    }

    fn post_visit_expr(&mut self, _expr: &Expr) -> ControlFlow<QueryError> {
        self.expression_depth -= 1;
        ControlFlow::Continue(())
    }

    fn pre_visit_statement(&mut self, statement: &Statement) -> ControlFlow<QueryError> {
        self.depth += 1;
        if self.depth > 1 {
            // A statement inside the query: `WITH x AS (DELETE …)`, `EXPLAIN` of a write, …
            let nested_query = matches!(statement, Statement::Query(_));
            if !nested_query {
                return ControlFlow::Break(QueryError::refused(
                    statement_kind(statement),
                    READ_ONLY,
                ));
            }
        }
        ControlFlow::Continue(())
    }

    fn post_visit_statement(&mut self, _statement: &Statement) -> ControlFlow<QueryError> {
        self.depth -= 1;
        ControlFlow::Continue(())
    }

    fn pre_visit_select(&mut self, select: &Select) -> ControlFlow<QueryError> {
        if select.into.is_some() {
            return ControlFlow::Break(QueryError::refused(
                "SELECT INTO",
                format!("it creates a table; {READ_ONLY}"),
            ));
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_relation(&mut self, relation: &ObjectName) -> ControlFlow<QueryError> {
        match file_like(relation) {
            Some(path) => ControlFlow::Break(QueryError::refused(
                "file access",
                format!("`{path}` names a file, not a table; {NO_FILES}"),
            )),
            None => ControlFlow::Continue(()),
        }
    }

    fn pre_visit_table_factor(&mut self, factor: &TableFactor) -> ControlFlow<QueryError> {
        let function = match factor {
            TableFactor::Table {
                name,
                args: Some(_),
                ..
            } => Some(name),
            TableFactor::Function { name, .. } => Some(name),
            _ => None,
        };
        let Some(name) = function else {
            return ControlFlow::Continue(());
        };
        let plain = name_parts(name)
            .last()
            .map(|p| p.to_ascii_lowercase())
            .unwrap_or_default();
        if name.0.len() == 1 && self.table_functions.contains(&plain) {
            return ControlFlow::Continue(());
        }
        let reason = if reads_files(&plain) {
            format!("it reads files; {NO_FILES}")
        } else {
            format!(
                "there is no such table function; the table functions are: {}",
                self.table_functions
                    .iter()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        ControlFlow::Break(QueryError::refused(
            format!("table function {name}"),
            reason,
        ))
    }
}

fn name_parts(name: &ObjectName) -> Vec<String> {
    name.0
        .iter()
        .map(|part| match part {
            ObjectNamePart::Identifier(ident) => ident.value.clone(),
            ObjectNamePart::Function(f) => f.name.value.clone(),
        })
        .collect()
}

/// The file path a relation names, if it looks like one: a single-quoted name
/// (`FROM 'data.csv'`), a URL, a path, or a name ending in a data file's extension.
fn file_like(name: &ObjectName) -> Option<String> {
    for part in &name.0 {
        let ObjectNamePart::Identifier(ident) = part else {
            continue;
        };
        let value = ident.value.to_ascii_lowercase();
        let single_quoted = ident.quote_style == Some('\'');
        let path = value.contains('/')
            || value.contains('\\')
            || value.contains(':')
            || value.starts_with('~');
        let extension = [
            ".parquet", ".csv", ".tsv", ".json", ".ndjson", ".jsonl", ".arrow", ".ipc", ".feather",
            ".avro", ".orc", ".txt", ".gz", ".bz2", ".xz", ".zst", ".zstd",
        ]
        .iter()
        .any(|ext| value.ends_with(ext));
        if single_quoted || path || extension {
            return Some(ident.value.clone());
        }
    }
    None
}

fn reads_files(function: &str) -> bool {
    function.starts_with("read_")
        || function.ends_with("_scan")
        || function.contains("parquet")
        || function.contains("csv")
        || function.contains("json")
        || function.contains("avro")
        || function.contains("file")
        || function == "glob"
}

fn df_statement_kind(statement: &DFStatement) -> String {
    match statement {
        DFStatement::Statement(s) => statement_kind(s),
        DFStatement::CreateExternalTable(_) => "CREATE EXTERNAL TABLE".into(),
        DFStatement::CopyTo(_) => "COPY TO".into(),
        DFStatement::Explain(_) => "EXPLAIN".into(),
        DFStatement::Reset(_) => "RESET".into(),
    }
}

/// The statement's kind in SQL words, for the refusal message.
pub(crate) fn statement_kind(statement: &Statement) -> String {
    match statement {
        Statement::Insert(_) => "INSERT".into(),
        Statement::Update(_) => "UPDATE".into(),
        Statement::Delete(_) => "DELETE".into(),
        Statement::Merge(_) => "MERGE".into(),
        Statement::CreateTable(_) => "CREATE TABLE".into(),
        Statement::CreateView(_) => "CREATE VIEW".into(),
        Statement::Drop { object_type, .. } => format!("DROP {object_type}"),
        Statement::AlterTable(_) => "ALTER TABLE".into(),
        Statement::Truncate(_) => "TRUNCATE".into(),
        Statement::Copy { .. } => "COPY".into(),
        Statement::Set(_) => "SET".into(),
        Statement::Reset(_) => "RESET".into(),
        Statement::Prepare { .. } => "PREPARE".into(),
        Statement::Execute { .. } => "EXECUTE".into(),
        Statement::Deallocate { .. } => "DEALLOCATE".into(),
        Statement::ShowVariable { .. } => "SHOW <setting>".into(),
        other => leading_keywords(&other.to_string()),
    }
}

/// `CREATE OR REPLACE FUNCTION f …` → `CREATE FUNCTION`; `COMMIT` → `COMMIT`.
fn leading_keywords(text: &str) -> String {
    const NOISE: &[&str] = &[
        "OR",
        "REPLACE",
        "TEMPORARY",
        "TEMP",
        "IF",
        "NOT",
        "EXISTS",
        "UNIQUE",
        "GLOBAL",
        "LOCAL",
        "EXTERNAL",
    ];
    let mut words = text.split_whitespace();
    let Some(first) = words.next() else {
        return "statement".into();
    };
    let first = first.to_ascii_uppercase();
    if !matches!(first.as_str(), "CREATE" | "DROP" | "ALTER" | "SHOW") {
        return first;
    }
    let object = words
        .map(|w| w.to_ascii_uppercase())
        .find(|w| !NOISE.contains(&w.as_str()))
        .filter(|w| w.chars().all(|c| c.is_ascii_uppercase() || c == '_'));
    match object {
        Some(object) => format!("{first} {object}"),
        None => first,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn functions() -> BTreeSet<String> {
        ["generate_series", "range"]
            .into_iter()
            .map(String::from)
            .collect()
    }

    fn refused(sql: &str) -> (String, String) {
        match parse_and_check(sql, 50, &functions()) {
            Err(QueryError::Refused {
                statement_kind,
                reason,
            }) => (statement_kind, reason),
            other => panic!("{sql}: expected a refusal, got {other:?}"),
        }
    }

    fn allowed(sql: &str) {
        if let Err(e) = parse_and_check(sql, 50, &functions()) {
            panic!("{sql}: expected it to be allowed, got {e:?}");
        }
    }

    #[test]
    fn allows_queries_and_introspection() {
        allowed("SELECT 1");
        allowed("select * from events where namespace = 'a' order by time limit 3");
        allowed("WITH x AS (SELECT 1 AS a) SELECT a FROM x");
        allowed("VALUES (1, 'a'), (2, 'b')");
        allowed("SELECT * FROM (SELECT 1) t UNION ALL SELECT 2");
        allowed("EXPLAIN SELECT 1");
        allowed("EXPLAIN ANALYZE SELECT 1");
        allowed("EXPLAIN VERBOSE SELECT * FROM events");
        allowed("SHOW TABLES");
        allowed("SHOW COLUMNS FROM events");
        allowed("DESCRIBE events");
        allowed("SELECT count(*) FROM generate_series(1, 10)");
        allowed("SELECT * FROM range(3)");
        allowed("SELECT 1;");
        allowed("SELECT 'a/b.csv' AS not_a_file");
    }

    #[test]
    fn refuses_writes_and_ddl() {
        for (sql, kind) in [
            ("INSERT INTO events VALUES (1)", "INSERT"),
            ("UPDATE events SET reason = 'x'", "UPDATE"),
            ("DELETE FROM events", "DELETE"),
            (
                "MERGE INTO events USING pods ON true WHEN MATCHED THEN DELETE",
                "MERGE",
            ),
            ("CREATE TABLE t (a int)", "CREATE TABLE"),
            ("CREATE TABLE t AS SELECT 1", "CREATE TABLE"),
            ("CREATE VIEW v AS SELECT 1", "CREATE VIEW"),
            ("CREATE OR REPLACE VIEW v AS SELECT 1", "CREATE VIEW"),
            ("CREATE SCHEMA s", "CREATE SCHEMA"),
            ("DROP TABLE events", "DROP TABLE"),
            ("DROP VIEW v", "DROP VIEW"),
            ("ALTER TABLE events ADD COLUMN x int", "ALTER TABLE"),
            ("TRUNCATE events", "TRUNCATE"),
            ("PREPARE p AS SELECT 1", "PREPARE"),
            ("EXECUTE p", "EXECUTE"),
            ("BEGIN", "BEGIN"),
        ] {
            let (got, reason) = refused(sql);
            assert_eq!(got, kind, "{sql}");
            assert!(reason.contains("read-only"), "{sql}: {reason}");
        }
        for sql in [
            "SHOW ALL",
            "SHOW datafusion.execution.batch_size",
            "SHOW FUNCTIONS",
        ] {
            let (kind, reason) = refused(sql);
            assert!(kind.starts_with("SHOW"), "{sql}: {kind}");
            assert!(reason.contains("only SHOW TABLES"), "{sql}: {reason}");
        }
    }

    #[test]
    fn refuses_settings() {
        for (sql, kind) in [
            ("SET datafusion.execution.target_partitions = 1", "SET"),
            ("SET TIME ZONE 'UTC'", "SET"),
            ("RESET datafusion.execution.batch_size", "RESET"),
        ] {
            let (got, reason) = refused(sql);
            assert_eq!(got, kind, "{sql}");
            assert!(reason.contains("settings"), "{sql}: {reason}");
        }
    }

    #[test]
    fn refuses_file_access() {
        for (sql, kind) in [
            ("COPY events TO '/tmp/x.parquet'", "COPY TO"),
            ("COPY (SELECT 1) TO '/tmp/x.csv' STORED AS CSV", "COPY TO"),
            (
                "CREATE EXTERNAL TABLE t STORED AS CSV LOCATION '/etc/passwd'",
                "CREATE EXTERNAL TABLE",
            ),
            ("SELECT * FROM '/etc/passwd'", "file access"),
            ("SELECT * FROM 'file:///etc/passwd'", "file access"),
            ("SELECT * FROM \"/etc/passwd\"", "file access"),
            ("SELECT * FROM \"data.parquet\"", "file access"),
            (
                "SELECT * FROM events e JOIN 's3://bucket/x.csv' f ON true",
                "file access",
            ),
            ("DESCRIBE '/etc/passwd'", "file access"),
            (
                "SELECT * FROM read_parquet('/etc/passwd')",
                "table function read_parquet",
            ),
            (
                "SELECT * FROM read_csv('/etc/passwd')",
                "table function read_csv",
            ),
            (
                "SELECT * FROM read_json('/etc/passwd')",
                "table function read_json",
            ),
            (
                "SELECT * FROM (SELECT * FROM read_csv('/etc/passwd')) x",
                "table function read_csv",
            ),
        ] {
            let (got, reason) = refused(sql);
            assert_eq!(got, kind, "{sql}");
            assert!(
                reason.contains("files") || reason.contains("file"),
                "{sql}: {reason}"
            );
        }
        let (kind, reason) = refused("SELECT * FROM no_such_function(1)");
        assert_eq!(kind, "table function no_such_function");
        assert!(reason.contains("generate_series, range"), "{reason}");
    }

    #[test]
    fn refuses_hidden_writes() {
        let (kind, _) = refused("SELECT * INTO new_table FROM events");
        assert_eq!(kind, "SELECT INTO");
        let (kind, _) = refused("EXPLAIN INSERT INTO events VALUES (1)");
        assert_eq!(kind, "EXPLAIN INSERT");
        let (kind, _) = refused("EXPLAIN COPY events TO '/tmp/x'");
        assert_eq!(kind, "EXPLAIN COPY TO");
        let (kind, _) =
            refused("EXPLAIN CREATE EXTERNAL TABLE t STORED AS CSV LOCATION '/etc/passwd'");
        assert_eq!(kind, "EXPLAIN CREATE EXTERNAL TABLE");
    }

    #[test]
    fn refuses_what_does_not_parse_but_is_never_allowed() {
        for (sql, kind) in [
            ("COPY events FROM '/etc/passwd'", "COPY FROM"),
            ("COPY events FROM STDIN", "COPY FROM"),
            ("INSERT INTO events VALUES (", "INSERT"),
            ("CREATE TABLE (", "CREATE TABLE"),
            ("SET", "SET"),
            ("DROP", "DROP"),
        ] {
            let (got, _) = refused(sql);
            assert_eq!(got, kind, "{sql}");
        }
    }

    #[test]
    fn refuses_several_statements() {
        let (kind, reason) = refused("select 1; drop table x");
        assert_eq!(kind, "more than one statement");
        assert!(reason.contains("found 2"), "{reason}");
        let (kind, _) = refused("select 1; select 2");
        assert_eq!(kind, "more than one statement");
    }

    #[test]
    fn syntax_errors_carry_a_position() {
        let error =
            parse_and_check("SELECT *\nFROM events\nWHERE (", 50, &functions()).unwrap_err();
        assert_eq!(error.kind(), "syntax", "{error:?}");
        let position = error.position().expect("a position");
        assert_eq!(position.line, 3, "{error:?}");
        let error = parse_and_check("SELECT 'unterminated", 50, &functions()).unwrap_err();
        assert_eq!(error.kind(), "syntax", "{error:?}");
        assert_eq!(error.position().map(|p| p.line), Some(1), "{error:?}");
        let error = parse_and_check("SELECT a,\n  b +", 50, &functions()).unwrap_err();
        assert_eq!(
            error.position(),
            Some(crate::Position { line: 2, column: 6 }),
            "{error:?}"
        );
        let error = parse_and_check("SELEC 1", 50, &functions()).unwrap_err();
        assert_eq!(error.kind(), "syntax", "{error:?}");
        let error = parse_and_check("  ;  ", 50, &functions()).unwrap_err();
        assert_eq!(error.kind(), "syntax");
    }
}
