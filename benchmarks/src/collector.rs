//! `tally-bench collector-memory`: the collector's memory with many pods in the API server.
//!
//! Needs the real test cluster (`bash tests/cluster/up.sh`). Creates `pods` pods in a
//! namespace of its own, bound directly to the kubelet-less fake nodes (they tolerate every
//! taint and stay Pending: an informer holds them all the same), with kubectl processes
//! running in parallel. Then the real `tally-agent collector` lists and watches everything,
//! writing to a real `tally serve`; once its informers synced and it holds every pod, its
//! peak RSS (VmHWM) and current RSS (VmRSS) are read from /proc. Aim: ≤ 128 MiB.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn env() -> HashMap<String, String> {
    let dir = std::env::var("TALLY_CLUSTER_DIR").unwrap_or_else(|_| "/tmp/tally-cluster".into());
    let text = std::fs::read_to_string(format!("{dir}/env"))
        .expect("no test cluster is up: run `bash tests/cluster/up.sh` first");
    text.lines()
        .filter_map(|l| l.strip_prefix("export "))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim_matches('"').to_string()))
        .collect()
}

fn kubectl(
    env: &HashMap<String, String>,
    args: &[&str],
    input: Option<&str>,
) -> Result<String, String> {
    let mut child = Command::new(&env["TALLY_KUBECTL"])
        .env("KUBECONFIG", &env["TALLY_ADMIN_KUBECONFIG"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    if let Some(input) = input {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .map_err(|e| e.to_string())?;
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn proc_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

struct Cleanup(HashMap<String, String>, String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = kubectl(
            &self.0,
            &["delete", "namespace", &self.1, "--wait=false"],
            None,
        );
    }
}

pub async fn collector_memory(pods: usize, parallel: usize) -> (String, String) {
    let env = env();
    let ns = format!("tally-bench-collector-{}", std::process::id());
    kubectl(&env, &["create", "namespace", &ns], None).expect("create namespace");
    let _cleanup = Cleanup(env.clone(), ns.clone());
    let fake: Vec<String> = env["TALLY_FAKE_NODES"]
        .split_whitespace()
        .map(str::to_string)
        .collect();
    let image = env["TALLY_IMAGE_BUSYBOX"].clone();

    // Create the pods: lists of 200 pods, `parallel` kubectl processes at a time.
    let creating = Instant::now();
    let chunks: Vec<String> = (0..pods)
        .collect::<Vec<_>>()
        .chunks(200)
        .map(|chunk| {
            let items: Vec<String> = chunk
                .iter()
                .map(|i| {
                    format!(
                        r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"p-{i}","namespace":"{ns}","labels":{{"app":"bench-{}","tier":"web"}}}},"spec":{{"nodeName":"{}","tolerations":[{{"operator":"Exists"}}],"containers":[{{"name":"app","image":"{image}","imagePullPolicy":"Never","command":["sh","-c","sleep 3600"],"env":[{{"name":"MODE","value":"bench"}}],"resources":{{"requests":{{"cpu":"10m","memory":"16Mi"}},"limits":{{"memory":"64Mi"}}}}}}]}}}}"#,
                        i % 50,
                        fake[i % fake.len().max(1)]
                    )
                })
                .collect();
            format!(r#"{{"apiVersion":"v1","kind":"List","items":[{}]}}"#, items.join(","))
        })
        .collect();
    let mut handles = Vec::new();
    let queue = std::sync::Arc::new(std::sync::Mutex::new(chunks));
    for _ in 0..parallel.max(1) {
        let queue = queue.clone();
        let env = env.clone();
        handles.push(std::thread::spawn(move || {
            loop {
                let Some(list) = queue.lock().unwrap().pop() else {
                    break;
                };
                if let Err(e) = kubectl(&env, &["create", "-f", "-", "-o", "name"], Some(&list)) {
                    eprintln!("kubectl create: {e}");
                }
            }
        }));
    }
    for h in handles {
        h.join().unwrap();
    }
    let created = kubectl(
        &env,
        &["get", "pods", "-n", &ns, "--no-headers", "-o", "name"],
        None,
    )
    .map(|o| o.lines().count())
    .unwrap_or(0);
    let create_seconds = creating.elapsed().as_secs_f64();
    eprintln!("created {created} pods in {create_seconds:.0} s");

    // The appliance and the collector (plain HTTP/2 on loopback: TLS is not what is measured).
    let dir = std::env::temp_dir().join(format!("tally-bench-collector-{}", std::process::id()));
    let exe = std::env::current_exe().unwrap();
    let bin_dir = exe.parent().unwrap();
    let (mut tally, flight) = crate::spawn_tally_serve(&dir);
    let mut agent = Command::new(bin_dir.join("tally-agent"))
        .args([
            "collector",
            "--insecure",
            "--listen",
            "127.0.0.1:0",
            "--appliance",
            &flight,
            "--kubeconfig",
            &env["TALLY_ADMIN_KUBECONFIG"],
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("tally-agent beside tally-bench");
    let pid = agent.id();
    let mut lines = BufReader::new(agent.stdout.take().unwrap()).lines();
    let health = loop {
        let line = lines.next().expect("collector output").unwrap();
        if let Some(addr) = line.strip_prefix("listening ") {
            break format!("http://{addr}");
        }
    };
    std::thread::spawn(move || for _ in lines {});
    let syncing = Instant::now();
    let http = reqwest::Client::new();
    let mut held = 0.0;
    while syncing.elapsed() < Duration::from_secs(300) {
        let ready = http
            .get(format!("{health}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        let metrics = http.get(format!("{health}/metrics")).send().await.ok();
        let text = match metrics {
            Some(r) => r.text().await.unwrap_or_default(),
            None => String::new(),
        };
        held = text
            .lines()
            .find_map(|l| l.strip_prefix("tally_collector_objects{kind=\"Pod\"} "))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
        if ready && held >= created as f64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let sync_seconds = syncing.elapsed().as_secs_f64();
    // Let it send the initial snapshot and scrape a few rounds before measuring.
    tokio::time::sleep(Duration::from_secs(20)).await;
    let hwm = proc_kib(pid, "VmHWM:");
    let rss = proc_kib(pid, "VmRSS:");
    let _ = agent.kill();
    let _ = agent.wait();
    let _ = tally.kill();
    let _ = tally.wait();
    let _ = std::fs::remove_dir_all(&dir);
    let body = format!(
        "| pods in the API server | pods held by the collector | create time | informers synced after | collector peak RSS (VmHWM) | RSS after 20 s more |\n\
         |---|---|---|---|---|---|\n\
         | {created} | {held:.0} | {create_seconds:.0} s ({parallel} kubectl in parallel) | {sync_seconds:.1} s | {:.1} MiB | {:.1} MiB |\n",
        hwm as f64 / 1024.0,
        rss as f64 / 1024.0,
    );
    ("collector-memory".to_string(), body)
}
