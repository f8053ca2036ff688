//! The workloads table's data: `queries/ui_workloads.sql` over the window, kept in memory and
//! refreshed in the background once it is a minute old (`crate::background`), so searching, filtering,
//! sorting and paging 30,000 workloads is a scan of a vector, not a query per keystroke.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use crate::UiState;
use crate::data::{self, DataError};

/// One workload as the table shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Workload {
    pub namespace: String,
    pub kind: String,
    pub name: String,
    pub replicas: Option<i64>,
    pub hpa: Option<(i64, i64)>,
    pub containers: i64,
    pub cpu_request_cores: Option<f64>,
    pub cpu_p95_cores: Option<f64>,
    pub memory_request_bytes: Option<f64>,
    pub memory_max_bytes: Option<f64>,
    pub oom_kills: i64,
    pub savings_monthly_usd: Option<f64>,
    pub status: String,
}

/// The summary of one window.
#[derive(Debug)]
pub struct Summary {
    pub workloads: Vec<Workload>,
    pub window_end: DateTime<Utc>,
    pub computed_at: Instant,
    /// How long the query took.
    pub took: Duration,
}

/// The kept summary, refreshed in the background.
pub type SummaryCache = crate::background::Background<Summary>;

/// Reads the summary now.
pub async fn compute(state: &UiState) -> Result<Summary, DataError> {
    let started = Instant::now();
    let end = (state.now)();
    let rows = data::run(
        &state.engine,
        &tally_queries::ui::WORKLOADS,
        &data::window(end, state.window_days),
    )
    .await?;
    let workloads = rows
        .iter()
        .map(|r| Workload {
            namespace: r.text("namespace").to_string(),
            kind: r.text("kind").to_string(),
            name: r.text("name").to_string(),
            replicas: r.int("replicas"),
            hpa: r.int("hpa_min_replicas").zip(r.int("hpa_max_replicas")),
            containers: r.int("containers").unwrap_or(0),
            cpu_request_cores: r.float("cpu_request_cores"),
            cpu_p95_cores: r.float("cpu_p95_cores"),
            memory_request_bytes: r.float("memory_request_bytes"),
            memory_max_bytes: r.float("memory_max_bytes"),
            oom_kills: r.int("oom_kills").unwrap_or(0),
            savings_monthly_usd: r.float("savings_monthly_usd"),
            status: r.text("status").to_string(),
        })
        .collect();
    Ok(Summary {
        workloads,
        window_end: end,
        computed_at: Instant::now(),
        took: started.elapsed(),
    })
}

impl crate::background::Computed for Summary {
    const WHAT: &'static str = "the workload summary";

    async fn compute(state: &UiState) -> Result<Self, DataError> {
        compute(state).await
    }

    /// A summary without any usage (the rollups lag the newest rows by one flush, e.g. right
    /// after start) is refreshed soon rather than kept for a minute.
    fn fresh(&self, _state: &UiState) -> bool {
        let no_usage = self.workloads.iter().all(|w| w.cpu_p95_cores.is_none());
        self.computed_at.elapsed() <= crate::background::max_age(no_usage)
    }
}

/// The columns the table sorts by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortKey {
    Namespace,
    Name,
    Kind,
    Replicas,
    CpuRequest,
    CpuP95,
    MemoryRequest,
    MemoryMax,
    Savings,
    Status,
}

impl SortKey {
    pub const ALL: [SortKey; 10] = [
        SortKey::Namespace,
        SortKey::Name,
        SortKey::Kind,
        SortKey::Replicas,
        SortKey::CpuRequest,
        SortKey::CpuP95,
        SortKey::MemoryRequest,
        SortKey::MemoryMax,
        SortKey::Savings,
        SortKey::Status,
    ];

    pub fn id(self) -> &'static str {
        match self {
            SortKey::Namespace => "namespace",
            SortKey::Name => "name",
            SortKey::Kind => "kind",
            SortKey::Replicas => "replicas",
            SortKey::CpuRequest => "cpu_request",
            SortKey::CpuP95 => "cpu_p95",
            SortKey::MemoryRequest => "memory_request",
            SortKey::MemoryMax => "memory_max",
            SortKey::Savings => "savings",
            SortKey::Status => "status",
        }
    }

    pub fn parse(id: &str) -> Option<SortKey> {
        SortKey::ALL.into_iter().find(|k| k.id() == id)
    }
}

/// What the table shows: search text, filters, sort and page.
#[derive(Debug, Clone, PartialEq)]
pub struct Filter {
    /// Case-insensitive substring of namespace/name.
    pub search: String,
    pub namespace: Option<String>,
    pub kind: Option<String>,
    pub status: Option<String>,
    pub sort: SortKey,
    pub descending: bool,
    /// From 0.
    pub page: usize,
    pub per_page: usize,
}

impl Default for Filter {
    fn default() -> Self {
        Filter {
            search: String::new(),
            namespace: None,
            kind: None,
            status: None,
            sort: SortKey::Savings,
            descending: true,
            page: 0,
            per_page: 50,
        }
    }
}

fn cmp_opt<T: PartialOrd>(a: Option<T>, b: Option<T>) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    match (a, b) {
        (Some(a), Some(b)) => a.partial_cmp(&b).unwrap_or(Ordering::Equal),
        (Some(_), None) => Ordering::Greater,
        (None, Some(_)) => Ordering::Less,
        (None, None) => Ordering::Equal,
    }
}

/// The matching workloads (references into the summary) sorted, and how many matched.
pub fn select<'a>(workloads: &'a [Workload], filter: &Filter) -> (Vec<&'a Workload>, usize) {
    let search = filter.search.trim().to_lowercase();
    let mut matched: Vec<&Workload> = workloads
        .iter()
        .filter(|w| {
            (search.is_empty()
                || w.name.to_lowercase().contains(&search)
                || w.namespace.to_lowercase().contains(&search))
                && filter.namespace.as_ref().is_none_or(|n| &w.namespace == n)
                && filter.kind.as_ref().is_none_or(|k| &w.kind == k)
                && filter.status.as_ref().is_none_or(|s| &w.status == s)
        })
        .collect();
    let total = matched.len();
    matched.sort_by(|a, b| {
        let primary = match filter.sort {
            SortKey::Namespace => a.namespace.cmp(&b.namespace),
            SortKey::Name => a.name.cmp(&b.name),
            SortKey::Kind => a.kind.cmp(&b.kind),
            SortKey::Replicas => cmp_opt(a.replicas, b.replicas),
            SortKey::CpuRequest => cmp_opt(a.cpu_request_cores, b.cpu_request_cores),
            SortKey::CpuP95 => cmp_opt(a.cpu_p95_cores, b.cpu_p95_cores),
            SortKey::MemoryRequest => cmp_opt(a.memory_request_bytes, b.memory_request_bytes),
            SortKey::MemoryMax => cmp_opt(a.memory_max_bytes, b.memory_max_bytes),
            SortKey::Savings => cmp_opt(a.savings_monthly_usd, b.savings_monthly_usd),
            SortKey::Status => a.status.cmp(&b.status),
        };
        let primary = if filter.descending {
            primary.reverse()
        } else {
            primary
        };
        primary
            .then_with(|| a.namespace.cmp(&b.namespace))
            .then_with(|| a.name.cmp(&b.name))
            .then_with(|| a.kind.cmp(&b.kind))
    });
    let start = (filter.page * filter.per_page).min(matched.len());
    let end = (start + filter.per_page).min(matched.len());
    (matched[start..end].to_vec(), total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workload(ns: &str, name: &str, savings: Option<f64>, status: &str) -> Workload {
        Workload {
            namespace: ns.into(),
            kind: "Deployment".into(),
            name: name.into(),
            replicas: Some(1),
            hpa: None,
            containers: 1,
            cpu_request_cores: Some(1.0),
            cpu_p95_cores: Some(0.5),
            memory_request_bytes: None,
            memory_max_bytes: None,
            oom_kills: 0,
            savings_monthly_usd: savings,
            status: status.into(),
        }
    }

    #[test]
    fn filters_sort_and_pages() {
        let all: Vec<Workload> = (0..120)
            .map(|i| {
                workload(
                    if i % 2 == 0 { "shop" } else { "search" },
                    &format!("w{i:03}"),
                    (i % 3 != 0).then_some(i as f64),
                    if i % 5 == 0 { "applied" } else { "pending" },
                )
            })
            .collect();
        let (page, total) = select(&all, &Filter::default());
        assert_eq!(total, 120);
        assert_eq!(page.len(), 50);
        assert_eq!(page[0].name, "w119", "largest savings first");
        assert!(page.windows(2).all(|w| {
            w[0].savings_monthly_usd.unwrap_or(-1.0) >= w[1].savings_monthly_usd.unwrap_or(-1.0)
        }));

        let filter = Filter {
            namespace: Some("shop".into()),
            status: Some("applied".into()),
            sort: SortKey::Name,
            descending: false,
            ..Filter::default()
        };
        let (page, total) = select(&all, &filter);
        assert_eq!(total, 12, "i % 10 == 0");
        assert_eq!(page[0].name, "w000");
        assert!(
            page.iter()
                .all(|w| w.namespace == "shop" && w.status == "applied")
        );

        let filter = Filter {
            search: "W11".into(),
            page: 0,
            per_page: 5,
            sort: SortKey::Name,
            descending: false,
            ..Filter::default()
        };
        let (page, total) = select(&all, &filter);
        assert_eq!(total, 10);
        assert_eq!(
            page.iter().map(|w| w.name.as_str()).collect::<Vec<_>>(),
            ["w110", "w111", "w112", "w113", "w114"]
        );
        let (page, _) = select(
            &all,
            &Filter {
                page: 1,
                ..filter.clone()
            },
        );
        assert_eq!(page[0].name, "w115");
        let (page, _) = select(&all, &Filter { page: 9, ..filter });
        assert!(page.is_empty());
    }
}
