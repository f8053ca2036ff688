//! Policies: the operator's own validation (beyond what the OpenAPI schema can say), which
//! workloads a policy covers, its time windows, and what a change may be within its bounds
//! and maximum step.

use std::collections::BTreeMap;

use chrono::{DateTime, Datelike, NaiveTime, Timelike, Utc};

use crate::crd::{PolicySpec, Resources, TimeWindow, Weekday, WorkloadKind};
use crate::quantity;

/// Every problem of a policy, each naming its field (`spec.maxCpu: must be >= spec.minCpu`).
/// An empty list means the policy is valid.
pub fn validate(spec: &PolicySpec) -> Vec<String> {
    let mut errors = Vec::new();
    let mut parse = |field: &str, value: &Option<String>| -> Option<f64> {
        let text = value.as_ref()?;
        match quantity::parse(text) {
            Ok(v) => Some(v),
            Err(e) => {
                errors.push(format!("spec.{field}: {e}"));
                None
            }
        }
    };
    let min_cpu = parse("minCpu", &spec.min_cpu);
    let max_cpu = parse("maxCpu", &spec.max_cpu);
    let min_memory = parse("minMemory", &spec.min_memory);
    let max_memory = parse("maxMemory", &spec.max_memory);
    if let (Some(min), Some(max)) = (min_cpu, max_cpu)
        && max < min
    {
        errors.push("spec.maxCpu: must be >= spec.minCpu".into());
    }
    if let (Some(min), Some(max)) = (min_memory, max_memory)
        && max < min
    {
        errors.push("spec.maxMemory: must be >= spec.minMemory".into());
    }
    if max_cpu == Some(0.0) {
        errors.push("spec.maxCpu: must be more than zero".into());
    }
    if max_memory == Some(0.0) {
        errors.push("spec.maxMemory: must be more than zero".into());
    }
    if let Some(step) = spec.max_step_percent
        && !(1..=100).contains(&step)
    {
        errors.push(format!(
            "spec.maxStepPercent: must be between 1 and 100, got {step}"
        ));
    }
    for (i, window) in spec.windows.iter().enumerate() {
        let field = format!("spec.windows[{i}]");
        let start = parse_time(&window.start);
        let end = parse_time(&window.end);
        if start.is_none() {
            errors.push(format!(
                "{field}.start: must be HH:MM (00:00 to 23:59), got `{}`",
                window.start
            ));
        }
        if end.is_none() {
            errors.push(format!(
                "{field}.end: must be HH:MM (00:01 to 24:00), got `{}`",
                window.end
            ));
        }
        if start.is_some() && start == end {
            errors.push(format!("{field}.end: must differ from {field}.start"));
        }
        if let Some(zone) = &window.time_zone
            && zone.parse::<chrono_tz::Tz>().is_err()
        {
            errors.push(format!(
                "{field}.timeZone: `{zone}` is not an IANA time zone (like Europe/Berlin)"
            ));
        }
    }
    if let Some(workloads) = &spec.workloads {
        for (i, name) in workloads.names.iter().enumerate() {
            if name.trim().is_empty() {
                errors.push(format!("spec.workloads.names[{i}]: must not be empty"));
            }
        }
    }
    for (i, name) in spec.node_groups.iter().enumerate() {
        if name.trim().is_empty() {
            errors.push(format!("spec.nodeGroups[{i}]: must not be empty"));
        }
    }
    for (i, name) in spec.namespaces.iter().enumerate() {
        if name.trim().is_empty() {
            errors.push(format!("spec.namespaces[{i}]: must not be empty"));
        }
    }
    errors
}

/// Minutes since midnight of `HH:MM` (`24:00` is 1440).
fn parse_time(text: &str) -> Option<u32> {
    if text == "24:00" {
        return Some(24 * 60);
    }
    let time = NaiveTime::parse_from_str(text, "%H:%M").ok()?;
    Some(time.hour() * 60 + time.minute())
}

/// What the operator knows about a workload when it decides whether a policy covers it.
#[derive(Debug, Clone)]
pub struct Subject<'a> {
    pub namespace: &'a str,
    pub namespace_labels: &'a BTreeMap<String, String>,
    pub kind: WorkloadKind,
    pub name: &'a str,
    pub labels: &'a BTreeMap<String, String>,
}

/// Whether `spec` covers the workload (validity is checked separately).
pub fn covers(spec: &PolicySpec, subject: &Subject<'_>) -> bool {
    if !spec.namespaces.is_empty() && !spec.namespaces.iter().any(|n| n == subject.namespace) {
        return false;
    }
    if let Some(selector) = &spec.namespace_selector
        && !selector.matches(subject.namespace_labels)
    {
        return false;
    }
    if let Some(workloads) = &spec.workloads {
        if !workloads.kinds.is_empty() && !workloads.kinds.contains(&subject.kind) {
            return false;
        }
        if !workloads.names.is_empty() && !workloads.names.iter().any(|n| n == subject.name) {
            return false;
        }
        if let Some(selector) = &workloads.selector
            && !selector.matches(subject.labels)
        {
            return false;
        }
    }
    true
}

fn weekday(day: chrono::Weekday) -> Weekday {
    match day {
        chrono::Weekday::Mon => Weekday::Mon,
        chrono::Weekday::Tue => Weekday::Tue,
        chrono::Weekday::Wed => Weekday::Wed,
        chrono::Weekday::Thu => Weekday::Thu,
        chrono::Weekday::Fri => Weekday::Fri,
        chrono::Weekday::Sat => Weekday::Sat,
        chrono::Weekday::Sun => Weekday::Sun,
    }
}

/// Whether `now` is inside one of the windows (no windows: always). A window that ends
/// before it starts runs past midnight into the next day; its day is the day it starts.
pub fn in_window(windows: &[TimeWindow], now: DateTime<Utc>) -> bool {
    windows.is_empty() || windows.iter().any(|w| window_contains(w, now))
}

fn window_contains(window: &TimeWindow, now: DateTime<Utc>) -> bool {
    let (Some(start), Some(end)) = (parse_time(&window.start), parse_time(&window.end)) else {
        return false;
    };
    let zone: chrono_tz::Tz = match &window.time_zone {
        Some(zone) => match zone.parse() {
            Ok(z) => z,
            Err(_) => return false,
        },
        None => chrono_tz::UTC,
    };
    let local = now.with_timezone(&zone);
    let minute = local.hour() * 60 + local.minute();
    let today = weekday(local.weekday());
    let yesterday = weekday(local.weekday().pred());
    let day_ok = |day: Weekday| window.days.is_empty() || window.days.contains(&day);
    if start < end {
        day_ok(today) && start <= minute && minute < end
    } else {
        (day_ok(today) && minute >= start) || (day_ok(yesterday) && minute < end)
    }
}

/// A policy's bounds as numbers (cores and bytes).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Bounds {
    pub min_cpu: Option<f64>,
    pub max_cpu: Option<f64>,
    pub min_memory: Option<f64>,
    pub max_memory: Option<f64>,
    pub max_step_percent: Option<u32>,
}

impl Bounds {
    /// The bounds of a valid policy.
    pub fn of(spec: &PolicySpec) -> Bounds {
        let q = |v: &Option<String>| v.as_deref().and_then(|t| quantity::parse(t).ok());
        Bounds {
            min_cpu: q(&spec.min_cpu),
            max_cpu: q(&spec.max_cpu),
            min_memory: q(&spec.min_memory),
            max_memory: q(&spec.max_memory),
            max_step_percent: spec.max_step_percent,
        }
    }
}

impl Bounds {
    /// The bounds under which every one of `specs` holds: the highest minimum, the lowest
    /// maximum and the smallest step of them all.
    pub fn all<'a>(specs: impl IntoIterator<Item = &'a PolicySpec>) -> Bounds {
        let pick = |a: Option<f64>, b: Option<f64>, f: fn(f64, f64) -> f64| match (a, b) {
            (Some(a), Some(b)) => Some(f(a, b)),
            (a, b) => a.or(b),
        };
        specs.into_iter().map(Bounds::of).fold(
            Bounds {
                min_cpu: None,
                max_cpu: None,
                min_memory: None,
                max_memory: None,
                max_step_percent: None,
            },
            |acc, b| Bounds {
                min_cpu: pick(acc.min_cpu, b.min_cpu, f64::max),
                max_cpu: pick(acc.max_cpu, b.max_cpu, f64::min),
                min_memory: pick(acc.min_memory, b.min_memory, f64::max),
                max_memory: pick(acc.max_memory, b.max_memory, f64::min),
                max_step_percent: match (acc.max_step_percent, b.max_step_percent) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                },
            },
        )
    }

    /// Why no value can satisfy these bounds (a minimum above a maximum), if none can.
    pub fn conflict(&self) -> Option<String> {
        if let (Some(min), Some(max)) = (self.min_cpu, self.max_cpu)
            && min > max
        {
            return Some(format!("minimum CPU {min} above maximum CPU {max}"));
        }
        if let (Some(min), Some(max)) = (self.min_memory, self.max_memory)
            && min > max
        {
            return Some(format!(
                "minimum memory {min} bytes above maximum memory {max} bytes"
            ));
        }
        None
    }
}

/// One value's next setting: the recommendation moved at most the maximum step away from
/// the value set now, then held inside the bounds. The bounds win over the step: nothing
/// outside a policy's bounds is ever set.
fn next(
    current: Option<f64>,
    recommended: f64,
    min: Option<f64>,
    max: Option<f64>,
    step: Option<u32>,
) -> f64 {
    let mut value = recommended;
    if let (Some(current), Some(step)) = (current, step)
        && current > 0.0
    {
        let delta = current * f64::from(step) / 100.0;
        value = value.clamp(current - delta, current + delta);
    }
    if let Some(max) = max {
        value = value.min(max);
    }
    if let Some(min) = min {
        value = value.max(min);
    }
    value
}

/// What the operator sets on one container: each value the analysis recommends, moved by
/// [`next`]; values without a recommendation stay as they are (`None`). A limit is never set
/// below its request.
pub fn plan(current: &Resources, recommended: &Resources, bounds: &Bounds) -> Resources {
    let step = bounds.max_step_percent;
    let cpu = |cur: Option<f64>, rec: Option<f64>| {
        rec.map(|r| next(cur, r, bounds.min_cpu, bounds.max_cpu, step))
            // Whole millicores: what the API server stores.
            .map(|v| (v * 1000.0).round() / 1000.0)
    };
    let mem = |cur: Option<i64>, rec: Option<i64>| {
        rec.map(|r| {
            next(
                cur.map(|c| c as f64),
                r as f64,
                bounds.min_memory,
                bounds.max_memory,
                step,
            )
            .round() as i64
        })
    };
    let mut out = Resources {
        cpu_request_cores: cpu(current.cpu_request_cores, recommended.cpu_request_cores),
        cpu_limit_cores: cpu(current.cpu_limit_cores, recommended.cpu_limit_cores),
        memory_request_bytes: mem(
            current.memory_request_bytes,
            recommended.memory_request_bytes,
        ),
        memory_limit_bytes: mem(current.memory_limit_bytes, recommended.memory_limit_bytes),
    };
    // A request above the limit the container keeps (or gets) would be refused by the API
    // server: the limit rises with it.
    if let Some(request) = out.cpu_request_cores {
        let limit = out.cpu_limit_cores.or(current.cpu_limit_cores);
        if limit.is_some_and(|l| l < request) {
            out.cpu_limit_cores = Some(request);
        }
    }
    if let Some(request) = out.memory_request_bytes {
        let limit = out.memory_limit_bytes.or(current.memory_limit_bytes);
        if limit.is_some_and(|l| l < request) {
            out.memory_limit_bytes = Some(request);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn several_policies_hold_at_once_and_conflicting_ones_are_found() {
        let a = PolicySpec {
            min_cpu: Some("100m".into()),
            max_cpu: Some("2".into()),
            max_memory: Some("1Gi".into()),
            max_step_percent: Some(50),
            ..spec()
        };
        let b = PolicySpec {
            min_cpu: Some("250m".into()),
            max_cpu: Some("4".into()),
            min_memory: Some("64Mi".into()),
            max_step_percent: Some(20),
            ..spec()
        };
        let both = Bounds::all([&a, &b]);
        assert_eq!(both.min_cpu, Some(0.25));
        assert_eq!(both.max_cpu, Some(2.0));
        assert_eq!(both.min_memory, Some(64.0 * 1024.0 * 1024.0));
        assert_eq!(both.max_memory, Some(1024.0 * 1024.0 * 1024.0));
        assert_eq!(both.max_step_percent, Some(20));
        assert_eq!(both.conflict(), None);
        // One policy alone: its own bounds.
        let alone = Bounds::all([&a]);
        assert_eq!(
            (alone.min_cpu, alone.max_step_percent),
            (Some(0.1), Some(50))
        );
        // A floor above the other's ceiling: nothing can hold both.
        let c = PolicySpec {
            min_cpu: Some("3".into()),
            ..spec()
        };
        let conflict = Bounds::all([&a, &c]).conflict().expect("a conflict");
        assert!(conflict.contains("minimum CPU 3"), "{conflict}");
    }
    use crate::crd::{LabelSelector, Mode, WorkloadSelector};
    use chrono::TimeZone;

    fn spec() -> PolicySpec {
        PolicySpec {
            namespaces: vec![],
            namespace_selector: None,
            workloads: None,
            mode: Mode::AutoApply,
            min_cpu: None,
            max_cpu: None,
            min_memory: None,
            max_memory: None,
            max_step_percent: None,
            windows: vec![],
            apply_method: Default::default(),
            node_groups: vec![],
        }
    }

    fn window(days: &[Weekday], start: &str, end: &str, zone: Option<&str>) -> TimeWindow {
        TimeWindow {
            days: days.to_vec(),
            start: start.into(),
            end: end.into(),
            time_zone: zone.map(str::to_string),
        }
    }

    #[test]
    fn a_valid_policy_has_no_errors() {
        let mut s = spec();
        s.min_cpu = Some("50m".into());
        s.max_cpu = Some("2".into());
        s.min_memory = Some("64Mi".into());
        s.max_memory = Some("4Gi".into());
        s.max_step_percent = Some(50);
        s.windows = vec![window(
            &[Weekday::Sat],
            "22:00",
            "06:00",
            Some("Europe/Berlin"),
        )];
        assert_eq!(validate(&s), Vec::<String>::new());
    }

    #[test]
    fn each_error_names_its_field() {
        let mut s = spec();
        s.min_cpu = Some("2".into());
        s.max_cpu = Some("500m".into());
        s.min_memory = Some("1Gi".into());
        s.max_memory = Some("lots".into());
        s.max_step_percent = Some(500);
        s.windows = vec![
            window(&[], "25:00", "10:00", Some("Mars/Base")),
            window(&[], "10:00", "10:00", None),
        ];
        s.workloads = Some(WorkloadSelector {
            names: vec!["".into()],
            ..Default::default()
        });
        s.node_groups = vec!["pool".into(), " ".into()];
        let errors = validate(&s);
        for expected in [
            "spec.maxCpu: must be >= spec.minCpu",
            "spec.maxMemory: `lots` is not a quantity (like 250m, 2, 512Mi)",
            "spec.maxStepPercent: must be between 1 and 100, got 500",
            "spec.windows[0].start: must be HH:MM (00:00 to 23:59), got `25:00`",
            "spec.windows[0].timeZone: `Mars/Base` is not an IANA time zone (like Europe/Berlin)",
            "spec.windows[1].end: must differ from spec.windows[1].start",
            "spec.workloads.names[0]: must not be empty",
            "spec.nodeGroups[1]: must not be empty",
        ] {
            assert!(
                errors.iter().any(|e| e == expected),
                "{expected} missing from {errors:#?}"
            );
        }
        assert_eq!(errors.len(), 8, "{errors:#?}");
    }

    #[test]
    fn coverage_by_namespace_kind_name_and_labels() {
        let empty = BTreeMap::new();
        let web = BTreeMap::from([("app".to_string(), "web".to_string())]);
        let subject = |ns, kind, name, labels| Subject {
            namespace: ns,
            namespace_labels: &empty,
            kind,
            name,
            labels,
        };
        let mut s = spec();
        assert!(covers(
            &s,
            &subject("a", WorkloadKind::Deployment, "x", &empty)
        ));
        s.namespaces = vec!["a".into()];
        assert!(!covers(
            &s,
            &subject("b", WorkloadKind::Deployment, "x", &empty)
        ));
        s.workloads = Some(WorkloadSelector {
            kinds: vec![WorkloadKind::Deployment],
            names: vec![],
            selector: Some(LabelSelector {
                match_labels: web.clone(),
            }),
        });
        assert!(covers(
            &s,
            &subject("a", WorkloadKind::Deployment, "x", &web)
        ));
        assert!(!covers(
            &s,
            &subject("a", WorkloadKind::Deployment, "x", &empty)
        ));
        assert!(!covers(
            &s,
            &subject("a", WorkloadKind::StatefulSet, "x", &web)
        ));
        s.workloads.as_mut().unwrap().names = vec!["y".into()];
        assert!(!covers(
            &s,
            &subject("a", WorkloadKind::Deployment, "x", &web)
        ));
    }

    #[test]
    fn windows_use_their_time_zone_and_may_cross_midnight() {
        // 2026-11-28 is a Saturday.
        let at = |h, m| Utc.with_ymd_and_hms(2026, 11, 28, h, m, 0).unwrap();
        let office = [window(&[Weekday::Sat], "09:00", "17:00", None)];
        assert!(in_window(&office, at(9, 0)));
        assert!(in_window(&office, at(16, 59)));
        assert!(!in_window(&office, at(17, 0)));
        assert!(!in_window(&office, at(8, 59)));
        // Berlin is UTC+1 in November: 09:00 Berlin is 08:00 UTC.
        let berlin = [window(&[], "09:00", "10:00", Some("Europe/Berlin"))];
        assert!(in_window(&berlin, at(8, 30)));
        assert!(!in_window(&berlin, at(9, 30)));
        // Saturday 22:00 to Sunday 06:00: Sunday 05:00 is inside, Saturday 05:00 is not.
        let night = [window(&[Weekday::Sat], "22:00", "06:00", None)];
        assert!(in_window(&night, at(23, 0)));
        assert!(!in_window(&night, at(5, 0)));
        let sunday = Utc.with_ymd_and_hms(2026, 11, 29, 5, 0, 0).unwrap();
        assert!(in_window(&night, sunday));
        assert!(in_window(&[], at(3, 0)));
        let to_midnight = [window(&[], "20:00", "24:00", None)];
        assert!(in_window(&to_midnight, at(23, 59)));
    }

    fn res(cpu: f64, mem: i64) -> Resources {
        Resources {
            cpu_request_cores: Some(cpu),
            cpu_limit_cores: None,
            memory_request_bytes: Some(mem),
            memory_limit_bytes: None,
        }
    }

    #[test]
    fn plan_clamps_to_bounds_and_the_maximum_step() {
        const MI: i64 = 1 << 20;
        let current = res(1.0, 512 * MI);
        // No bounds: the recommendation as it is.
        let free = plan(&current, &res(0.1, 100 * MI), &Bounds::default());
        assert_eq!(free, res(0.1, 100 * MI));
        // A 50 % step: 1 core may only fall to 0.5; 512Mi only to 256Mi.
        let step = Bounds {
            max_step_percent: Some(50),
            ..Default::default()
        };
        assert_eq!(
            plan(&current, &res(0.1, 100 * MI), &step),
            res(0.5, 256 * MI)
        );
        // Bounds: never below 200m / 300Mi, never above 2 / 1Gi; bounds win over the step.
        let bounded = Bounds {
            min_cpu: Some(0.2),
            max_cpu: Some(2.0),
            min_memory: Some((300 * MI) as f64),
            max_memory: Some((1024 * MI) as f64),
            max_step_percent: None,
        };
        assert_eq!(
            plan(&current, &res(0.1, 100 * MI), &bounded),
            res(0.2, 300 * MI)
        );
        assert_eq!(
            plan(&current, &res(8.0, 8192 * MI), &bounded),
            res(2.0, 1024 * MI)
        );
        // A value without a recommendation is left alone.
        let only_cpu = Resources {
            cpu_request_cores: Some(0.3),
            ..Default::default()
        };
        let p = plan(&current, &only_cpu, &Bounds::default());
        assert_eq!(p.memory_request_bytes, None);
        assert_eq!(p.cpu_request_cores, Some(0.3));
    }

    #[test]
    fn a_limit_never_falls_below_its_request() {
        let current = Resources {
            cpu_request_cores: Some(0.1),
            cpu_limit_cores: Some(0.2),
            memory_request_bytes: None,
            memory_limit_bytes: None,
        };
        let rec = Resources {
            cpu_request_cores: Some(0.5),
            ..Default::default()
        };
        let p = plan(&current, &rec, &Bounds::default());
        assert_eq!(p.cpu_request_cores, Some(0.5));
        assert_eq!(p.cpu_limit_cores, Some(0.5));
    }
}
