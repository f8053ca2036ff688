//! The pricing catalog shipped in the binary (`prices.csv`): on-demand list prices and
//! indicative spot prices of common AWS, GCP and Azure types in a few regions, with the date
//! they were taken. It is seeded into the `prices` table (source `catalog`) so SQL can join it;
//! the user's rows (source `user`) override it in every query.

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
        let bad = |line: usize, why: String| AnalysisError::Catalog { line, why };
        let mut taken = None;
        let mut prices = Vec::new();
        let mut header_seen = false;
        for (i, line) in text.lines().enumerate() {
            let n = i + 1;
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            if let Some(comment) = line.strip_prefix('#') {
                if let Some(date) = comment.trim().strip_prefix("Taken:") {
                    let date = date.split_whitespace().next().unwrap_or("");
                    let date = date.trim_end_matches('.');
                    let day = NaiveDate::parse_from_str(date, "%Y-%m-%d")
                        .map_err(|e| bad(n, format!("`{date}` is not a YYYY-MM-DD date: {e}")))?;
                    taken = Some(day.and_hms_opt(0, 0, 0).expect("midnight").and_utc());
                }
                continue;
            }
            if !header_seen {
                if line
                    != "provider,region,instance_type,capacity_type,hourly_usd,cpu_cores,memory_gib,gpu_count"
                {
                    return Err(bad(n, format!("unexpected header `{line}`")));
                }
                header_seen = true;
                continue;
            }
            let f: Vec<&str> = line.split(',').collect();
            if f.len() != 8 {
                return Err(bad(n, format!("expected 8 fields, found {}", f.len())));
            }
            let num = |k: usize| -> Result<f64, AnalysisError> {
                f[k].parse::<f64>()
                    .map_err(|e| bad(n, format!("`{}` is not a number: {e}", f[k])))
            };
            if !matches!(f[3], "on_demand" | "spot") {
                return Err(bad(
                    n,
                    format!("capacity type must be on_demand or spot, got `{}`", f[3]),
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
                gpu_count: num(7)? as i64,
            });
        }
        let taken = taken.ok_or_else(|| bad(0, "no `# Taken: YYYY-MM-DD` line".into()))?;
        Ok(Catalog { taken, prices })
    }

    /// The catalog as rows of the `prices` table, in force from the date it was taken.
    pub fn batch(&self) -> RecordBatch {
        let p = &self.prices;
        let text = |f: fn(&CatalogPrice) -> &str| {
            Arc::new(StringArray::from_iter_values(p.iter().map(f))) as _
        };
        RecordBatch::try_new(
            Table::Prices.schema(),
            vec![
                Arc::new(
                    TimestampMillisecondArray::from(vec![self.taken.timestamp_millis(); p.len()])
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
                Arc::new(StringArray::from(vec!["catalog"; p.len()])),
            ],
        )
        .expect("the catalog batch matches the prices schema")
    }
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
}
