//! The pricing catalog shipped in the binary (`prices.csv`): on-demand list prices and
//! indicative spot prices of common AWS, GCP and Azure types in a few regions, with the date
//! they were taken. It is seeded into the `prices` table (source `catalog`) so SQL can join it;
//! the user's rows (source `user`) override it in every query. A price file in the same columns
//! (`tally serve --prices FILE`, the chart's `pricing.overrides`) is parsed by
//! [`Catalog::parse_overrides`] and loaded by `Analyzer::load_price_overrides`.

use std::sync::Arc;

use arrow::array::{Float64Array, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray};
use chrono::{DateTime, NaiveDate, Utc};
use tally_wire::Table;

use crate::AnalysisError;

/// The catalog as shipped.
pub const CATALOG_CSV: &str = include_str!("../prices.csv");

/// One catalog line.
#[derive(Debug, Clone, PartialEq)]
pub struct CatalogPrice {
    pub provider: String,
    pub region: String,
    pub instance_type: String,
    /// `on_demand` or `spot`.
    pub capacity_type: String,
    pub hourly_usd: f64,
    pub cpu_cores: f64,
    pub memory_bytes: i64,
    pub gpu_count: i64,
}

/// The catalog's prices and the date they were taken (from its `# Taken:` line).
#[derive(Debug, Clone)]
pub struct Catalog {
    pub taken: DateTime<Utc>,
    pub prices: Vec<CatalogPrice>,
}

impl Catalog {
    /// The shipped catalog.
    pub fn shipped() -> Catalog {
        Catalog::parse(CATALOG_CSV).expect("the shipped catalog parses (tested)")
    }

    /// Parses a catalog: `#` comment lines (one says `# Taken: YYYY-MM-DD`), a header, rows.
    pub fn parse(text: &str) -> Result<Catalog, AnalysisError> {
        let (taken, prices) = parse_lines(text).map_err(|e| AnalysisError::Catalog {
            line: e.line,
            why: match e.column {
                Some(column) => format!("column {column}: {}", e.why),
                None => e.why,
            },
        })?;
        let taken = taken.ok_or_else(|| AnalysisError::Catalog {
            line: 0,
            why: "no `# Taken: YYYY-MM-DD` line".into(),
        })?;
        Ok(Catalog { taken, prices })
    }

    /// Parses the user's price overrides (`tally serve --prices FILE`): the catalog's format
    /// (`#` comments, the header [`HEADER`], one row per type and capacity type) without the
    /// `# Taken:` line, each (region, instance type, capacity type) at most once.
    pub fn parse_overrides(text: &str) -> Result<Vec<CatalogPrice>, AnalysisError> {
        let bad = |e: LineError| AnalysisError::PriceFile {
            line: e.line,
            column: e.column.unwrap_or("-").to_string(),
            why: e.why,
        };
        let (_, prices) = parse_lines(text).map_err(bad)?;
        let mut seen = std::collections::HashMap::new();
        for (p, line) in prices.iter().zip(override_lines(text)) {
            let key = (&p.region, &p.instance_type, &p.capacity_type);
            if let Some(first) = seen.insert(key, line) {
                return Err(bad(LineError {
                    line,
                    column: Some("instance_type"),
                    why: format!(
                        "{} {} {} is already priced on line {first}",
                        p.region, p.instance_type, p.capacity_type
                    ),
                }));
            }
        }
        Ok(prices)
    }

    /// The catalog as rows of the `prices` table, in force from the date it was taken.
    pub fn batch(&self) -> RecordBatch {
        batch_of(&self.prices, self.taken, "catalog")
    }
}

/// The header line of the catalog and of a price-override file. Columns: `provider` (e.g.
/// aws, gcp, azure), `region`, `instance_type` (as the node's
/// `node.kubernetes.io/instance-type` label says), `capacity_type` (`on_demand` or `spot`),
/// `hourly_usd` (USD per hour, >= 0), `cpu_cores`, `memory_gib` (GiB, may be fractional) and
/// `gpu_count` (a whole number), all >= 0.
pub const HEADER: &str =
    "provider,region,instance_type,capacity_type,hourly_usd,cpu_cores,memory_gib,gpu_count";

const COLUMNS: [&str; 8] = [
    "provider",
    "region",
    "instance_type",
    "capacity_type",
    "hourly_usd",
    "cpu_cores",
    "memory_gib",
    "gpu_count",
];

/// What is wrong where: the 1-based line and, when one is to blame, the column.
struct LineError {
    line: usize,
    column: Option<&'static str>,
    why: String,
}

/// The 1-based line numbers of the data rows of a file that [`parse_lines`] accepted.
fn override_lines(text: &str) -> impl Iterator<Item = usize> + '_ {
    text.lines()
        .enumerate()
        .filter(|(_, l)| {
            let l = l.trim();
            !l.is_empty() && !l.starts_with('#')
        })
        .skip(1)
        .map(|(i, _)| i + 1)
}

/// Comment lines (one may say `# Taken: YYYY-MM-DD`), the header, rows; every field checked.
fn parse_lines(text: &str) -> Result<(Option<DateTime<Utc>>, Vec<CatalogPrice>), LineError> {
    let mut taken = None;
    let mut prices = Vec::new();
    let mut header_seen = false;
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let bad = |column: Option<&'static str>, why: String| LineError {
            line: n,
            column,
            why,
        };
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            if let Some(date) = comment.trim().strip_prefix("Taken:") {
                let date = date.split_whitespace().next().unwrap_or("");
                let date = date.trim_end_matches('.');
                let day = NaiveDate::parse_from_str(date, "%Y-%m-%d")
                    .map_err(|e| bad(None, format!("`{date}` is not a YYYY-MM-DD date: {e}")))?;
                taken = Some(day.and_hms_opt(0, 0, 0).expect("midnight").and_utc());
            }
            continue;
        }
        if !header_seen {
            if line != HEADER {
                return Err(bad(
                    None,
                    format!("unexpected header `{line}`, expected `{HEADER}`"),
                ));
            }
            header_seen = true;
            continue;
        }
        let f: Vec<&str> = line.split(',').map(str::trim).collect();
        if f.len() != COLUMNS.len() {
            return Err(bad(
                None,
                format!("expected {} fields, found {}", COLUMNS.len(), f.len()),
            ));
        }
        for k in 0..3 {
            if f[k].is_empty() {
                return Err(bad(Some(COLUMNS[k]), "is empty".into()));
            }
        }
        let num = |k: usize| -> Result<f64, LineError> {
            let v = f[k]
                .parse::<f64>()
                .map_err(|e| bad(Some(COLUMNS[k]), format!("`{}` is not a number: {e}", f[k])))?;
            if !v.is_finite() || v < 0.0 {
                return Err(bad(
                    Some(COLUMNS[k]),
                    format!("`{}` must be a number >= 0", f[k]),
                ));
            }
            Ok(v)
        };
        if !matches!(f[3], "on_demand" | "spot") {
            return Err(bad(
                Some(COLUMNS[3]),
                format!("capacity type must be on_demand or spot, got `{}`", f[3]),
            ));
        }
        let gpus = num(7)?;
        if gpus.fract() != 0.0 {
            return Err(bad(
                Some(COLUMNS[7]),
                format!("`{}` is not a whole number", f[7]),
            ));
        }
        prices.push(CatalogPrice {
            provider: f[0].to_string(),
            region: f[1].to_string(),
            instance_type: f[2].to_string(),
            capacity_type: f[3].to_string(),
            hourly_usd: num(4)?,
            cpu_cores: num(5)?,
            memory_bytes: (num(6)? * (1u64 << 30) as f64) as i64,
            gpu_count: gpus as i64,
        });
    }
    if !header_seen {
        return Err(LineError {
            line: text.lines().count().max(1),
            column: None,
            why: format!("no header `{HEADER}`"),
        });
    }
    Ok((taken, prices))
}

/// Rows of the `prices` table for `prices`, in force from `at`, with `source`.
pub fn batch_of(prices: &[CatalogPrice], at: DateTime<Utc>, source: &str) -> RecordBatch {
    let p = prices;
    let text = |f: fn(&CatalogPrice) -> &str| {
        Arc::new(StringArray::from_iter_values(p.iter().map(f))) as _
    };
    RecordBatch::try_new(
        Table::Prices.schema(),
        vec![
            Arc::new(
                TimestampMillisecondArray::from(vec![at.timestamp_millis(); p.len()])
                    .with_timezone("UTC"),
            ),
            text(|c| &c.provider),
            text(|c| &c.region),
            text(|c| &c.instance_type),
            text(|c| &c.capacity_type),
            Arc::new(Float64Array::from_iter_values(
                p.iter().map(|c| c.hourly_usd),
            )),
            Arc::new(Float64Array::from_iter_values(
                p.iter().map(|c| c.cpu_cores),
            )),
            Arc::new(Int64Array::from_iter_values(
                p.iter().map(|c| c.memory_bytes),
            )),
            Arc::new(Int64Array::from_iter_values(p.iter().map(|c| c.gpu_count))),
            Arc::new(StringArray::from(vec![source; p.len()])),
        ],
    )
    .expect("the batch matches the prices schema")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_catalog_covers_three_providers_on_demand_and_spot() {
        let c = Catalog::shipped();
        assert_eq!(c.taken.format("%Y-%m-%d").to_string(), "2025-06-01");
        for provider in ["aws", "gcp", "azure"] {
            for capacity in ["on_demand", "spot"] {
                assert!(
                    c.prices
                        .iter()
                        .any(|p| p.provider == provider && p.capacity_type == capacity),
                    "{provider} {capacity}"
                );
            }
        }
        let m5 = c
            .prices
            .iter()
            .find(|p| {
                p.region == "us-east-1"
                    && p.instance_type == "m5.xlarge"
                    && p.capacity_type == "on_demand"
            })
            .unwrap();
        assert_eq!(
            (m5.hourly_usd, m5.cpu_cores, m5.memory_bytes),
            (0.192, 4.0, 16 << 30)
        );
        // Every spot price is below its on-demand price.
        for s in c.prices.iter().filter(|p| p.capacity_type == "spot") {
            let od = c
                .prices
                .iter()
                .find(|p| {
                    p.capacity_type == "on_demand"
                        && p.region == s.region
                        && p.instance_type == s.instance_type
                })
                .unwrap();
            assert!(s.hourly_usd < od.hourly_usd, "{}", s.instance_type);
        }
        assert_eq!(c.batch().num_rows(), c.prices.len());
    }

    #[test]
    fn a_bad_catalog_says_which_line_is_wrong() {
        let header =
            "provider,region,instance_type,capacity_type,hourly_usd,cpu_cores,memory_gib,gpu_count";
        let err = Catalog::parse(&format!(
            "# Taken: 2025-06-01\n{header}\naws,r,t,reserved,1,2,3,0\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("line 3") && err.contains("on_demand or spot"),
            "{err}"
        );
        let err = Catalog::parse(&format!("{header}\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("Taken"), "{err}");
        let err = Catalog::parse(&format!(
            "# Taken: 2025-06-01\n{header}\naws,r,t,spot,cheap,2,3,0\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("`cheap` is not a number"), "{err}");
    }

    #[test]
    fn a_price_file_parses_without_a_taken_line() {
        let p = Catalog::parse_overrides(&format!(
            "# ours\n\n{HEADER}\naws, us-east-1, m5.xlarge, on_demand, 0.15, 4, 16, 0\n"
        ))
        .unwrap();
        assert_eq!(p.len(), 1);
        assert_eq!(
            (
                p[0].instance_type.as_str(),
                p[0].hourly_usd,
                p[0].memory_bytes
            ),
            ("m5.xlarge", 0.15, 16 << 30)
        );
        assert!(
            Catalog::parse_overrides(&format!("{HEADER}\n"))
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn a_bad_price_file_names_the_line_and_the_column() {
        let refused = |rows: &str| {
            Catalog::parse_overrides(&format!("# ours\n{HEADER}\n{rows}"))
                .unwrap_err()
                .to_string()
        };
        let ok = "aws,us-east-1,m5.large,on_demand,0.09,2,8,0\n";
        let err = refused(&format!(
            "{ok}aws,us-east-1,m5.xlarge,on_demand,-0.1,4,16,0\n"
        ));
        assert_eq!(
            err,
            "line 4, column hourly_usd: `-0.1` must be a number >= 0"
        );
        let err = refused(&format!(
            "{ok}aws,us-east-1,m5.xlarge,reserved,0.1,4,16,0\n"
        ));
        assert_eq!(
            err,
            "line 4, column capacity_type: capacity type must be on_demand or spot, got `reserved`"
        );
        let err = refused("aws,us-east-1,m5.xlarge,spot,0.1,four,16,0\n");
        assert!(
            err.starts_with("line 3, column cpu_cores: `four` is not a number"),
            "{err}"
        );
        let err = refused("aws,us-east-1,p3.2xlarge,spot,3,8,61,0.5\n");
        assert!(err.starts_with("line 3, column gpu_count:"), "{err}");
        let err = refused("aws,,m5.xlarge,spot,0.1,4,16,0\n");
        assert_eq!(err, "line 3, column region: is empty");
        let err = refused("aws,us-east-1,m5.xlarge,spot,0.1,4,16\n");
        assert_eq!(err, "line 3, column -: expected 8 fields, found 7");
        let err = refused(&format!("{ok}{ok}"));
        assert_eq!(
            err,
            "line 4, column instance_type: us-east-1 m5.large on_demand is already priced on line 3"
        );
        let err = Catalog::parse_overrides("provider,region,type\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("line 1, column -: unexpected header"),
            "{err}"
        );
    }
}
