//! Policies as the UI edits them: which workloads are eligible, bounds, auto-apply or audit,
//! and when changes may happen. Until the operator's `Policy` custom resource exists the
//! appliance keeps them itself (a JSON file in its data directory); the page says so.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

/// One policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Policy {
    /// A DNS label: lower-case letters, digits and `-`.
    pub name: String,
    /// Namespaces it covers; `*` for all.
    pub namespaces: Vec<String>,
    /// `audit` (recommend only) or `auto` (apply within the windows).
    pub mode: String,
    pub min_cpu_cores: f64,
    pub max_cpu_cores: f64,
    pub min_memory_mib: f64,
    pub max_memory_mib: f64,
    /// The CPU percentile recommendations target, 50–100.
    pub cpu_percentile: f64,
    /// Headroom added to peak memory, 0–100 %.
    pub memory_margin_percent: f64,
    /// When changes may be applied, UTC, `HH:MM`.
    pub window_start: String,
    pub window_end: String,
}

impl Policy {
    /// Whether it covers a namespace.
    pub fn covers(&self, namespace: &str) -> bool {
        self.namespaces.iter().any(|n| n == "*" || n == namespace)
    }
}

/// A field's name and what is wrong with it.
pub type FieldErrors = BTreeMap<&'static str, String>;

/// The form as submitted: every value as text, kept to show it back with the errors.
pub type Form = BTreeMap<String, String>;

fn parse_number(
    form: &Form,
    field: &'static str,
    errors: &mut FieldErrors,
    low: f64,
    high: f64,
    unit: &str,
) -> f64 {
    let text = form.get(field).map(|s| s.trim()).unwrap_or("");
    match text.parse::<f64>() {
        Ok(v) if v.is_finite() && (low..=high).contains(&v) => v,
        Ok(_) => {
            errors.insert(field, format!("must be between {low} and {high} {unit}"));
            0.0
        }
        Err(_) => {
            errors.insert(field, format!("must be a number ({unit})"));
            0.0
        }
    }
}

fn parse_clock(form: &Form, field: &'static str, errors: &mut FieldErrors) -> String {
    let text = form.get(field).map(|s| s.trim()).unwrap_or("").to_string();
    let valid = text.len() == 5
        && text.as_bytes()[2] == b':'
        && text[..2].parse::<u32>().is_ok_and(|h| h < 24)
        && text[3..].parse::<u32>().is_ok_and(|m| m < 60)
        && text[..2]
            .bytes()
            .chain(text[3..].bytes())
            .all(|b| b.is_ascii_digit());
    if !valid {
        errors.insert(
            field,
            "must be a time of day as HH:MM (24-hour, UTC)".into(),
        );
    }
    text
}

/// Checks a submitted form: every error names its field.
pub fn validate(form: &Form) -> Result<Policy, FieldErrors> {
    let mut errors = FieldErrors::new();
    let name = form.get("name").map(|s| s.trim()).unwrap_or("").to_string();
    if name.is_empty()
        || name.len() > 63
        || !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        || name.starts_with('-')
        || name.ends_with('-')
    {
        errors.insert(
            "name",
            "must be 1–63 lower-case letters, digits or '-', starting and ending with a letter or digit".into(),
        );
    }
    let namespaces: Vec<String> = form
        .get("namespaces")
        .map(|s| s.as_str())
        .unwrap_or("")
        .split([',', ' ', '\n'])
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    if namespaces.is_empty() {
        errors.insert(
            "namespaces",
            "name at least one namespace, or * for all".into(),
        );
    }
    let mode = form.get("mode").map(|s| s.trim()).unwrap_or("").to_string();
    if mode != "audit" && mode != "auto" {
        errors.insert("mode", "must be audit or auto".into());
    }
    let min_cpu = parse_number(form, "min_cpu_cores", &mut errors, 0.0, 1024.0, "cores");
    let max_cpu = parse_number(form, "max_cpu_cores", &mut errors, 0.0, 1024.0, "cores");
    let min_memory = parse_number(form, "min_memory_mib", &mut errors, 0.0, 4_194_304.0, "MiB");
    let max_memory = parse_number(form, "max_memory_mib", &mut errors, 0.0, 4_194_304.0, "MiB");
    if !errors.contains_key("min_cpu_cores")
        && !errors.contains_key("max_cpu_cores")
        && min_cpu > max_cpu
    {
        errors.insert(
            "max_cpu_cores",
            format!("must be at least the minimum ({min_cpu} cores)"),
        );
    }
    if !errors.contains_key("min_memory_mib")
        && !errors.contains_key("max_memory_mib")
        && min_memory > max_memory
    {
        errors.insert(
            "max_memory_mib",
            format!("must be at least the minimum ({min_memory} MiB)"),
        );
    }
    let cpu_percentile = parse_number(form, "cpu_percentile", &mut errors, 50.0, 100.0, "%");
    let memory_margin = parse_number(form, "memory_margin_percent", &mut errors, 0.0, 100.0, "%");
    let window_start = parse_clock(form, "window_start", &mut errors);
    let window_end = parse_clock(form, "window_end", &mut errors);
    if !errors.contains_key("window_start")
        && !errors.contains_key("window_end")
        && window_start == window_end
    {
        errors.insert(
            "window_end",
            "must differ from the start (an empty window never allows changes)".into(),
        );
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Policy {
        name,
        namespaces,
        mode,
        min_cpu_cores: min_cpu,
        max_cpu_cores: max_cpu,
        min_memory_mib: min_memory,
        max_memory_mib: max_memory,
        cpu_percentile,
        memory_margin_percent: memory_margin,
        window_start,
        window_end,
    })
}

/// A policy as form values (to edit it).
pub fn to_form(policy: &Policy) -> Form {
    [
        ("name", policy.name.clone()),
        ("namespaces", policy.namespaces.join(", ")),
        ("mode", policy.mode.clone()),
        ("min_cpu_cores", policy.min_cpu_cores.to_string()),
        ("max_cpu_cores", policy.max_cpu_cores.to_string()),
        ("min_memory_mib", policy.min_memory_mib.to_string()),
        ("max_memory_mib", policy.max_memory_mib.to_string()),
        ("cpu_percentile", policy.cpu_percentile.to_string()),
        (
            "memory_margin_percent",
            policy.memory_margin_percent.to_string(),
        ),
        ("window_start", policy.window_start.clone()),
        ("window_end", policy.window_end.clone()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// The defaults of a new policy (the VPA/KRR anchors: p95 CPU, +15 % memory).
pub fn new_form() -> Form {
    to_form(&Policy {
        name: String::new(),
        namespaces: vec![],
        mode: "audit".into(),
        min_cpu_cores: 0.025,
        max_cpu_cores: 16.0,
        min_memory_mib: 250.0,
        max_memory_mib: 65536.0,
        cpu_percentile: 95.0,
        memory_margin_percent: 15.0,
        window_start: "01:00".into(),
        window_end: "05:00".into(),
    })
}

/// The policies, in memory and (when a file is given) on disk.
#[derive(Clone)]
pub struct PolicyStore {
    policies: Arc<Mutex<BTreeMap<String, Policy>>>,
    file: Option<PathBuf>,
}

impl PolicyStore {
    /// Loads the file if it exists (an unreadable file is logged and starts empty).
    pub fn open(file: Option<PathBuf>) -> PolicyStore {
        let policies = file
            .as_ref()
            .and_then(|f| std::fs::read(f).ok())
            .and_then(
                |bytes| match serde_json::from_slice::<Vec<Policy>>(&bytes) {
                    Ok(list) => Some(list),
                    Err(error) => {
                        tracing::error!(%error, "the policies file is not valid; starting empty");
                        None
                    }
                },
            )
            .unwrap_or_default()
            .into_iter()
            .map(|p| (p.name.clone(), p))
            .collect();
        PolicyStore {
            policies: Arc::new(Mutex::new(policies)),
            file,
        }
    }

    pub fn list(&self) -> Vec<Policy> {
        self.policies
            .lock()
            .expect("lock")
            .values()
            .cloned()
            .collect()
    }

    pub fn get(&self, name: &str) -> Option<Policy> {
        self.policies.lock().expect("lock").get(name).cloned()
    }

    /// Creates or replaces a policy and writes the file (atomically: temp file + rename).
    pub fn put(&self, policy: Policy) -> std::io::Result<()> {
        let mut policies = self.policies.lock().expect("lock");
        policies.insert(policy.name.clone(), policy);
        if let Some(file) = &self.file {
            let list: Vec<&Policy> = policies.values().collect();
            let tmp = file.with_extension("json.tmp");
            std::fs::write(
                &tmp,
                serde_json::to_vec_pretty(&list).expect("serialisable"),
            )?;
            std::fs::rename(&tmp, file)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(pairs: &[(&str, &str)]) -> Form {
        let mut form = new_form();
        for (k, v) in pairs {
            form.insert(k.to_string(), v.to_string());
        }
        form
    }

    #[test]
    fn a_good_policy_validates() {
        let policy = validate(&form(&[
            ("name", "shop-auto"),
            ("namespaces", "shop, search"),
        ]))
        .unwrap();
        assert_eq!(policy.namespaces, ["shop", "search"]);
        assert!(policy.covers("shop") && !policy.covers("other"));
        assert_eq!(policy.cpu_percentile, 95.0);
    }

    #[test]
    fn every_error_names_its_field() {
        let errors = validate(&form(&[
            ("name", "Bad_Name"),
            ("namespaces", " "),
            ("mode", "yolo"),
            ("min_cpu_cores", "4"),
            ("max_cpu_cores", "2"),
            ("min_memory_mib", "lots"),
            ("cpu_percentile", "120"),
            ("memory_margin_percent", "-1"),
            ("window_start", "25:00"),
            ("window_end", "5pm"),
        ]))
        .unwrap_err();
        assert_eq!(
            errors.keys().copied().collect::<Vec<_>>(),
            [
                "cpu_percentile",
                "max_cpu_cores",
                "memory_margin_percent",
                "min_memory_mib",
                "mode",
                "name",
                "namespaces",
                "window_end",
                "window_start"
            ]
        );
        assert_eq!(
            errors["max_cpu_cores"],
            "must be at least the minimum (4 cores)"
        );
        assert_eq!(errors["cpu_percentile"], "must be between 50 and 100 %");

        let errors = validate(&form(&[
            ("name", "x"),
            ("namespaces", "*"),
            ("window_start", "02:00"),
            ("window_end", "02:00"),
        ]))
        .unwrap_err();
        assert!(errors["window_end"].starts_with("must differ"));
    }

    #[test]
    fn policies_survive_a_restart_through_their_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("policies.json");
        let store = PolicyStore::open(Some(file.clone()));
        let policy = validate(&form(&[("name", "p"), ("namespaces", "*")])).unwrap();
        store.put(policy.clone()).unwrap();
        assert_eq!(PolicyStore::open(Some(file)).list(), vec![policy]);
    }
}
