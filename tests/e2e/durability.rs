//! kill -9 the appliance at random points while clients write and while compaction and
//! retention run; after every restart every acknowledged row is present exactly once (rows
//! past retention at most once, and gone in the end) and every Parquet file reads.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tally_e2e::{Server, events};
use tally_wire::{IngestClient, Table};

use crate::{Rng, rows_per_pod};

const KILLS: usize = 22;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_minus_nine_loses_no_acknowledged_row() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // Flush and compact constantly, so kills land in the middle of flushes, manifest
    // publication, compaction and WAL truncation as well as appends.
    let args = [
        "--insecure",
        "--flush-interval",
        "100ms",
        "--flush-rows",
        "2000",
        "--maintenance-interval",
        "250ms",
        "--delete-grace",
        "2s",
        // One batch in ten is ten days old: retention drops those partitions in every
        // maintenance pass, so kills land in retention too.
        "--retention",
        "events=7d",
    ];
    let mut rng = Rng::new(0x7a11);
    let mut sent: BTreeMap<String, u64> = BTreeMap::new();
    let mut acknowledged: BTreeMap<String, u64> = BTreeMap::new();
    let mut next_batch = 0u64;
    // Two days ago, so batches spread over many hour partitions.
    let base_ms = (chrono_now_ms() - 2 * 86_400_000) / 3_600_000 * 3_600_000;
    // Past retention: ten days ago.
    let old_base_ms = base_ms - 8 * 86_400_000;

    for round in 0..=KILLS {
        let server = Server::start(&data, &args).unwrap_or_else(|e| panic!("round {round}: {e}"));
        check(&server.http_url, &sent, &acknowledged, round).await;
        if round == KILLS {
            // Retention ran through the kills: in the end no row past it is left.
            let mut waited = 0;
            loop {
                let present = rows_per_pod(&server.http_url).await;
                let old = present.keys().filter(|id| id.starts_with("old-")).count();
                if old == 0 {
                    break;
                }
                waited += 1;
                assert!(
                    waited < 120,
                    "{old} batches past retention still present after 60 s"
                );
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            assert_eq!(server.terminate().code(), Some(0), "clean shutdown");
            break;
        }

        let acked = Arc::new(Mutex::new(Vec::<(String, u64)>::new()));
        let mut writers = Vec::new();
        for writer in 0..2 {
            let url = server.flight_url.clone();
            let acked = acked.clone();
            let plan: Vec<(String, i64, usize)> = (0..400)
                .map(|_| {
                    next_batch += 1;
                    let rows = rng.range(1, 400) as usize;
                    if next_batch.is_multiple_of(10) {
                        let id = format!("old-r{round:02}-w{writer}-b{next_batch:06}");
                        let start = old_base_ms + (next_batch as i64 / 10) * 97_000;
                        return (id, start, rows);
                    }
                    let id = format!("r{round:02}-w{writer}-b{next_batch:06}");
                    let start = base_ms + (next_batch as i64) * 97_000;
                    (id, start, rows)
                })
                .collect();
            for (id, _, rows) in &plan {
                sent.insert(id.clone(), *rows as u64);
            }
            writers.push(tokio::spawn(async move {
                let Ok(mut client) = IngestClient::connect(&url, None).await else {
                    return;
                };
                for (id, start, rows) in plan {
                    match client
                        .write(Table::Events, vec![events(&id, start, rows)])
                        .await
                    {
                        Ok(acks) if acks.len() == 1 => {
                            acked.lock().unwrap().push((id, rows as u64))
                        }
                        Ok(acks) => panic!("one batch got {} acknowledgements", acks.len()),
                        Err(_) => return,
                    }
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(rng.range(50, 700))).await;
        server.kill9();
        for writer in writers {
            writer.await.expect("writer task");
        }
        let newly = acked.lock().unwrap().clone();
        assert!(
            !newly.is_empty() || round > 0,
            "round {round}: nothing was acknowledged at all"
        );
        acknowledged.extend(newly);
    }
    assert!(
        acknowledged.len() > 100,
        "only {} batches acknowledged",
        acknowledged.len()
    );
    let old = acknowledged
        .keys()
        .filter(|id| id.starts_with("old-"))
        .count();
    assert!(old > 5, "only {old} batches past retention acknowledged");

    // Every Parquet file the store left behind reads completely.
    let mut files = 0;
    for entry in walk(&data.join("tables")) {
        let file = std::fs::File::open(&entry).unwrap();
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
            .unwrap_or_else(|e| panic!("{}: {e}", entry.display()))
            .build()
            .unwrap();
        for batch in reader {
            batch.unwrap_or_else(|e| panic!("{}: {e}", entry.display()));
        }
        files += 1;
    }
    assert!(files > 0, "no Parquet file was written");
    eprintln!(
        "survived {KILLS} kills: {} batches and {} rows acknowledged, all present once ({old} past retention, all dropped by it); {files} Parquet files read",
        acknowledged.len(),
        acknowledged.values().sum::<u64>()
    );
}

/// Every acknowledged batch is present with all its rows; nothing is present twice or in
/// part (a batch that reached the log but whose acknowledgement was lost may be present).
async fn check(
    http_url: &str,
    sent: &BTreeMap<String, u64>,
    acknowledged: &BTreeMap<String, u64>,
    round: usize,
) {
    let present = rows_per_pod(http_url).await;
    for (id, rows) in acknowledged {
        if id.starts_with("old-") {
            // Past retention: present whole until its partition is dropped, never twice.
            let found = present.get(id).copied().unwrap_or(0);
            assert!(
                found <= *rows,
                "round {round}: batch {id} past retention present {found} times its {rows} rows"
            );
            continue;
        }
        assert_eq!(
            present.get(id),
            Some(rows),
            "round {round}: acknowledged batch {id} lost or duplicated"
        );
    }
    for (id, rows) in &present {
        if id.starts_with("old-") {
            assert!(
                sent.get(id).is_some_and(|sent| rows <= sent),
                "round {round}: batch {id} present with {rows} rows, sent with {:?}",
                sent.get(id)
            );
            continue;
        }
        assert_eq!(
            sent.get(id),
            Some(rows),
            "round {round}: batch {id} present with {rows} rows, sent with {:?}",
            sent.get(id)
        );
    }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else if path.extension().is_some_and(|e| e == "parquet") {
            out.push(path);
        }
    }
    out
}

fn chrono_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}
