//! GPU utilisation and memory per container from NVIDIA's DCGM exporter.
//!
//! The exporter's Prometheus page carries one series per GPU with the pod it is assigned to
//! (`namespace`, `pod`, `container` labels). `DCGM_FI_DEV_GPU_UTIL` (percent) becomes a
//! fraction of one GPU, summed over the container's GPUs (two GPUs at 50 % = 1.0, like cores);
//! `DCGM_FI_DEV_FB_USED` (MiB) becomes bytes. GPUs assigned to no pod are ignored.
//!
//! There is no GPU on the machine that runs Tally's tests: the tests parse a recorded page in
//! the exporter's real format (`fixtures/dcgm-exporter.prom`), the collector's one mock.

use std::collections::HashMap;

use crate::usage::parse_labels;

/// One container's GPU usage.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct GpuUsage {
    /// Busy fraction summed over the container's GPUs.
    pub utilization: f64,
    /// Framebuffer memory used, bytes.
    pub memory_bytes: i64,
}

/// GPU usage per (namespace, pod, container).
pub type GpuMap = HashMap<(String, String, String), GpuUsage>;

/// Parses a DCGM exporter page.
pub fn parse(text: &str) -> GpuMap {
    let mut out: GpuMap = HashMap::new();
    for line in text.lines() {
        let (name, rest) = match line.split_once('{') {
            Some(split) => split,
            None => continue,
        };
        let util = name == "DCGM_FI_DEV_GPU_UTIL";
        if !util && name != "DCGM_FI_DEV_FB_USED" {
            continue;
        }
        let Some((labels, value)) = rest.rsplit_once('}') else {
            continue;
        };
        let Some(value) = value
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
        else {
            continue;
        };
        let labels = parse_labels(labels);
        let get = |k: &str| labels.get(k).cloned().unwrap_or_default();
        let key = (get("namespace"), get("pod"), get("container"));
        if key.1.is_empty() {
            continue;
        }
        let entry = out.entry(key).or_default();
        if util {
            entry.utilization += value / 100.0;
        } else {
            entry.memory_bytes += (value * 1024.0 * 1024.0).round() as i64;
        }
    }
    out
}

/// Reads one exporter: `http(s)://...` is fetched, `file://PATH` read (recorded pages).
pub async fn fetch(http: &reqwest::Client, endpoint: &str) -> Result<GpuMap, String> {
    let text = if let Some(path) = endpoint.strip_prefix("file://") {
        tokio::fs::read_to_string(path)
            .await
            .map_err(|e| format!("cannot read {path}: {e}"))?
    } else {
        let response = http
            .get(endpoint)
            .send()
            .await
            .map_err(|e| format!("cannot reach {endpoint}: {e}"))?;
        if !response.status().is_success() {
            return Err(format!("{endpoint} answered {}", response.status()));
        }
        response
            .text()
            .await
            .map_err(|e| format!("cannot read {endpoint}: {e}"))?
    };
    Ok(parse(&text))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The recorded exporter page (the mock: there is no GPU here).
    const FIXTURE: &str = include_str!("../fixtures/dcgm-exporter.prom");

    #[test]
    fn the_recorded_exporter_page_yields_the_assigned_gpu_only() {
        let gpus = parse(FIXTURE);
        assert_eq!(gpus.len(), 1, "{gpus:?}");
        let usage = gpus[&("ml".into(), "train-0".into(), "cuda".into())];
        assert!((usage.utilization - 0.87).abs() < 1e-9, "{usage:?}");
        assert_eq!(usage.memory_bytes, 10187 * 1024 * 1024);
    }

    #[test]
    fn two_gpus_of_one_container_add_up() {
        let page = "DCGM_FI_DEV_GPU_UTIL{gpu=\"0\",container=\"c\",namespace=\"n\",pod=\"p\"} 50\n\
                    DCGM_FI_DEV_GPU_UTIL{gpu=\"1\",container=\"c\",namespace=\"n\",pod=\"p\"} 50\n\
                    DCGM_FI_DEV_FB_USED{gpu=\"1\",container=\"c\",namespace=\"n\",pod=\"p\"} 1\n";
        let usage = parse(page)[&("n".into(), "p".into(), "c".into())];
        assert_eq!(
            usage,
            GpuUsage {
                utilization: 1.0,
                memory_bytes: 1 << 20
            }
        );
    }

    #[tokio::test]
    async fn a_file_endpoint_reads_a_recorded_page_and_a_missing_one_is_a_clear_error() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/dcgm-exporter.prom");
        let http = reqwest::Client::new();
        let gpus = fetch(&http, &format!("file://{path}")).await.unwrap();
        assert_eq!(gpus.len(), 1);
        let err = fetch(&http, "file:///nonexistent/dcgm.prom")
            .await
            .unwrap_err();
        assert!(
            err.starts_with("cannot read /nonexistent/dcgm.prom"),
            "{err}"
        );
    }
}
