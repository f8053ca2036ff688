//! `tally serve --prices FILE` on the real binary: a bad file stops the start naming its line
//! and column; a good one is in the prices table as source `user` and wins over the shipped
//! catalog in queries/instance_prices.sql; a restart with the same file adds no row, a changed
//! price adds exactly one.

use std::path::Path;
use std::time::{Duration, Instant};

use tally_e2e::{Server, sql};

const HEADER: &str =
    "provider,region,instance_type,capacity_type,hourly_usd,cpu_cores,memory_gib,gpu_count";

/// queries/instance_prices.sql at the moment it runs (the SQL API takes no parameters).
fn instance_prices_now() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../queries/instance_prices.sql");
    std::fs::read_to_string(path)
        .expect("instance_prices.sql")
        .lines()
        .filter(|l| !l.trim_start().starts_with("--"))
        .collect::<Vec<_>>()
        .join("\n")
        .replace("$at", "now()")
}

/// (hourly_usd, source) of one type in instance_prices.sql's answer.
async fn price_of(http: &str, instance_type: &str, capacity_type: &str) -> (f64, String) {
    let answer = sql(http, &instance_prices_now())
        .await
        .expect("instance_prices");
    let columns: Vec<&str> = answer["columns"]
        .as_array()
        .expect("columns")
        .iter()
        .map(|c| c["name"].as_str().expect("column name"))
        .collect();
    let at = |name: &str| columns.iter().position(|c| *c == name).expect(name);
    let found: Vec<(f64, String)> = answer["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .filter(|r| {
            r[at("region")] == "us-east-1"
                && r[at("instance_type")] == instance_type
                && r[at("capacity_type")] == capacity_type
        })
        .map(|r| {
            (
                r[at("hourly_usd")].as_f64().expect("price"),
                r[at("source")].as_str().expect("source").to_string(),
            )
        })
        .collect();
    assert_eq!(found.len(), 1, "{instance_type} {capacity_type}: {found:?}");
    found[0].clone()
}

async fn count(http: &str, query: &str) -> u64 {
    let answer = sql(http, query).await.expect(query);
    answer["rows"][0][0].as_u64().expect("a count")
}

/// Waits until the catalog (seeded in the background at start) is in the prices table.
async fn catalog_seeded(http: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while count(http, "SELECT count(*) FROM prices WHERE source = 'catalog'").await == 0 {
        assert!(Instant::now() < deadline, "the catalog was never seeded");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_price_file_overrides_the_catalog_once_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let file = dir.path().join("prices.csv");
    let file_arg = file.to_str().unwrap();

    // A bad file: the appliance does not start, and says where the file is wrong.
    std::fs::write(
        &file,
        format!("# ours\n{HEADER}\naws,us-east-1,m5.xlarge,reserved,0.15,4,16,0\n"),
    )
    .unwrap();
    let error = Server::start(&data, &["--insecure", "--prices", file_arg])
        .map(|_| panic!("started with a bad price file"))
        .unwrap_err();
    assert!(
        error.contains("line 3, column capacity_type")
            && error.contains("on_demand or spot")
            && error.contains("prices.csv"),
        "{error}"
    );

    // A good file: the user's price wins, other types keep the catalog's.
    let good = format!(
        "# ours\n{HEADER}\naws,us-east-1,m5.xlarge,on_demand,0.15,4,16,0\n\
         aws,us-east-1,m5.large,spot,0.03,2,8,0\n"
    );
    std::fs::write(&file, &good).unwrap();
    let server = Server::start(&data, &["--insecure", "--prices", file_arg]).unwrap();
    catalog_seeded(&server.http_url).await;
    assert_eq!(
        price_of(&server.http_url, "m5.xlarge", "on_demand").await,
        (0.15, "user".into())
    );
    assert_eq!(
        price_of(&server.http_url, "m5.large", "spot").await,
        (0.03, "user".into())
    );
    assert_eq!(
        price_of(&server.http_url, "m5.large", "on_demand").await,
        (0.096, "catalog".into())
    );
    let user_rows = "SELECT count(*) FROM prices WHERE source = 'user'";
    assert_eq!(count(&server.http_url, user_rows).await, 2);
    assert!(server.terminate().success());

    // The same file again: nothing new.
    let server = Server::start(&data, &["--insecure", "--prices", file_arg]).unwrap();
    assert_eq!(count(&server.http_url, user_rows).await, 2);
    assert!(server.terminate().success());

    // One price changed: one row more, and it is the price in force.
    std::fs::write(&file, good.replace("on_demand,0.15", "on_demand,0.14")).unwrap();
    let server = Server::start(&data, &["--insecure", "--prices", file_arg]).unwrap();
    assert_eq!(count(&server.http_url, user_rows).await, 3);
    assert_eq!(
        price_of(&server.http_url, "m5.xlarge", "on_demand").await,
        (0.14, "user".into())
    );
    assert!(server.terminate().success());
}
