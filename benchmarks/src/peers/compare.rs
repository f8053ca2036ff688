//! Do the systems give the same answers? Each system's per-container p95 CPU and max memory,
//! and its cost by namespace, against a reference (DuckDB's exact `quantile_cont`).

use std::collections::{HashMap, HashSet};

/// (namespace, pod, container)
pub type Key = (String, String, String);

#[derive(Debug, Clone, Copy)]
pub struct Usage {
    pub cpu_p95: f64,
    pub memory_max: f64,
}

pub type Answers = HashMap<Key, Usage>;
pub type Costs = HashMap<String, f64>;

/// Below one millicore a relative difference means nothing: it is measured against this.
const CPU_FLOOR: f64 = 1e-3;

fn relative(value: f64, reference: f64, floor: f64) -> f64 {
    (value - reference) / reference.abs().max(floor)
}

pub struct Agreement {
    pub compared: usize,
    /// Containers the reference has and this system lacks, and the other way round.
    pub missing: usize,
    pub extra: usize,
    /// Containers whose p95 CPU is off by more than the tolerance, and how many of them ran
    /// long (are not in the `short` set given).
    pub cpu_outside: usize,
    pub cpu_outside_long: usize,
    /// Signed relative difference of p95 CPU (system − reference) / reference: lowest, highest.
    pub cpu_low: f64,
    pub cpu_high: f64,
    /// The container furthest off in multiples of its tolerance: key, this system's value,
    /// the reference, the multiple.
    pub cpu_worst: Option<(Key, f64, f64, f64)>,
    pub memory_outside: usize,
    pub memory_worst: f64,
}

/// p95 CPU agrees when |system − reference| ≤ `cpu_tolerance.0` × reference +
/// `cpu_tolerance.1` (cores); maxima must be equal.
pub fn usage(
    reference: &Answers,
    other: &Answers,
    cpu_tolerance: (f64, f64),
    short: &HashSet<Key>,
) -> Agreement {
    let mut a = Agreement {
        compared: 0,
        missing: 0,
        extra: other.keys().filter(|k| !reference.contains_key(*k)).count(),
        cpu_outside: 0,
        cpu_outside_long: 0,
        cpu_low: 0.0,
        cpu_high: 0.0,
        cpu_worst: None,
        memory_outside: 0,
        memory_worst: 0.0,
    };
    let mut worst = 0.0f64;
    for (key, want) in reference {
        let Some(got) = other.get(key) else {
            a.missing += 1;
            continue;
        };
        a.compared += 1;
        let cpu = relative(got.cpu_p95, want.cpu_p95, CPU_FLOOR);
        a.cpu_low = a.cpu_low.min(cpu);
        a.cpu_high = a.cpu_high.max(cpu);
        let allowed = cpu_tolerance.0 * want.cpu_p95.abs() + cpu_tolerance.1;
        let off = (got.cpu_p95 - want.cpu_p95).abs();
        if off.is_nan() || off > allowed {
            a.cpu_outside += 1;
            if !short.contains(key) {
                a.cpu_outside_long += 1;
            }
        }
        if off / allowed > worst {
            worst = off / allowed;
            a.cpu_worst = Some((key.clone(), got.cpu_p95, want.cpu_p95, worst));
        }
        let memory = relative(got.memory_max, want.memory_max, 1.0).abs();
        // Maxima are exact in every system; 1e-9 allows a float's last digits.
        if memory.is_nan() || memory > 1e-9 {
            a.memory_outside += 1;
        }
        a.memory_worst = a.memory_worst.max(memory);
    }
    a
}

/// Largest relative difference of a namespace's cost, and namespaces missing on either side.
pub fn costs(reference: &Costs, other: &Costs) -> (f64, usize) {
    let mut worst = 0.0f64;
    let mut missing = other.keys().filter(|k| !reference.contains_key(*k)).count();
    for (namespace, want) in reference {
        match other.get(namespace) {
            Some(got) => {
                let diff = relative(*got, *want, 1e-9).abs();
                // A NaN cost is no answer.
                if diff.is_nan() {
                    missing += 1;
                } else {
                    worst = worst.max(diff);
                }
            }
            None => missing += 1,
        }
    }
    (worst, missing)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(pod: &str) -> Key {
        ("ns".into(), pod.into(), "c".into())
    }

    #[test]
    fn counts_differences_missing_and_extra_containers() {
        let reference: Answers = [
            (
                key("a"),
                Usage {
                    cpu_p95: 1.0,
                    memory_max: 100.0,
                },
            ),
            (
                key("b"),
                Usage {
                    cpu_p95: 2.0,
                    memory_max: 200.0,
                },
            ),
            (
                key("c"),
                Usage {
                    cpu_p95: 0.5,
                    memory_max: 50.0,
                },
            ),
        ]
        .into();
        let other: Answers = [
            (
                key("a"),
                Usage {
                    cpu_p95: 1.04,
                    memory_max: 100.0,
                },
            ),
            (
                key("b"),
                Usage {
                    cpu_p95: 1.8,
                    memory_max: 201.0,
                },
            ),
            (
                key("z"),
                Usage {
                    cpu_p95: 1.0,
                    memory_max: 1.0,
                },
            ),
        ]
        .into();
        let a = usage(&reference, &other, (0.05, 0.0), &[key("b")].into());
        assert_eq!((a.compared, a.missing, a.extra), (2, 1, 1));
        assert_eq!(a.cpu_outside, 1, "b is 10 % low");
        assert_eq!(a.cpu_outside_long, 0, "b is short-lived");
        assert!(
            (a.cpu_worst.as_ref().unwrap().3 - 2.0).abs() < 1e-9,
            "b is off by 2 tolerances"
        );
        assert!((a.cpu_low + 0.1).abs() < 1e-12 && (a.cpu_high - 0.04).abs() < 1e-12);
        assert_eq!(a.cpu_worst.unwrap().0, key("b"));
        assert_eq!(a.memory_outside, 1);
        assert!((a.memory_worst - 0.005).abs() < 1e-12);
    }

    #[test]
    fn a_nan_answer_is_a_disagreement() {
        let reference: Answers = [(
            key("a"),
            Usage {
                cpu_p95: 1.0,
                memory_max: 1.0,
            },
        )]
        .into();
        let other: Answers = [(
            key("a"),
            Usage {
                cpu_p95: f64::NAN,
                memory_max: 1.0,
            },
        )]
        .into();
        let none = HashSet::new();
        assert_eq!(usage(&reference, &other, (0.05, 0.0), &none).cpu_outside, 1);
    }

    #[test]
    fn the_absolute_tolerance_covers_small_values() {
        let reference: Answers = [(
            key("a"),
            Usage {
                cpu_p95: 0.0003,
                memory_max: 1.0,
            },
        )]
        .into();
        let other: Answers = [(
            key("a"),
            Usage {
                cpu_p95: 0.0100,
                memory_max: 1.0,
            },
        )]
        .into();
        let none = HashSet::new();
        assert_eq!(usage(&reference, &other, (0.05, 0.0), &none).cpu_outside, 1);
        assert_eq!(
            usage(&reference, &other, (0.05, 0.01), &none).cpu_outside,
            0
        );
    }

    #[test]
    fn cost_differences_are_relative() {
        let reference: Costs = [("a".into(), 10.0), ("b".into(), 5.0)].into();
        let other: Costs = [("a".into(), 10.5), ("c".into(), 1.0)].into();
        let (worst, missing) = costs(&reference, &other);
        assert!((worst - 0.05).abs() < 1e-12);
        assert_eq!(missing, 2);
    }
}
