//! How everything moves over time. Every function here is pure in (topology, time): nothing
//! depends on which window is being generated or in which order, so windows can be generated
//! independently and live streaming continues the history seamlessly.

use std::f64::consts::TAU;

use crate::Cluster;
use crate::rng::{hash2, unit, unit_pair, value_noise};
use crate::topology::{DAY, HOUR, JobSchedule, MINUTE, PodKind, Profile, Series, Workload};

/// The HPA re-evaluates (and pods come and go) on this grid.
pub(crate) const HPA_BUCKET: i64 = 5 * MINUTE;
/// Elastic (HPA) pods are renewed daily at this time of day (UTC), the trough of the load.
pub(crate) const INCARNATION_SHIFT: i64 = 3 * HOUR;
/// How long after an OOM kill the container is running again.
pub(crate) const RESTART_DELAY: i64 = 10_000;
const SPIKE_BUCKET: i64 = 10 * MINUTE;
const SLOW_NOISE_PERIOD: i64 = 15 * MINUTE;
/// How long a memory spike takes to climb to the limit before the kill.
const OOM_RAMP: i64 = 3 * MINUTE;
const MIN_WORKING_SET: f64 = 2.0 * 1024.0 * 1024.0;

const SALT_SLOW: u64 = 0x51_0e;
const SALT_SPIKE: u64 = 0x5b_1ce;
const SALT_RUN: u64 = 0x0a_b5;
const SALT_OOM: u64 = 0x00_0d;
const SALT_LEAK: u64 = 0x1e_ac;
const SALT_NODE: u64 = 0x0d_e5;

#[inline]
pub(crate) fn hour_of_day(t: i64) -> f64 {
    t.rem_euclid(DAY) as f64 / HOUR as f64
}

/// Saturday or Sunday (UTC). 1970-01-01 was a Thursday.
#[inline]
pub(crate) fn is_weekend(t: i64) -> bool {
    (t.div_euclid(DAY) + 3).rem_euclid(7) >= 5
}

/// The phase of the day at `t` as (cos, sin) of `2π · hour / 24`.
#[inline]
pub(crate) fn day_phase(t: i64) -> (f64, f64) {
    let (s, c) = (TAU * hour_of_day(t) / 24.0).sin_cos();
    (c, s)
}

/// A workload's load factor at `t` (1 on average on weekdays) and the bare diurnal phase in
/// `[-1, 1]`: a daily cosine peaking at the workload's peak hour (trough at night UTC), lower at
/// weekends, slow noise, and rare spikes.
#[inline]
pub(crate) fn load_at(w: &Workload, t: i64) -> (f64, f64) {
    load_with(w, t, day_phase(t), is_weekend(t))
}

/// [`load_at`] with the time-only parts computed once per sample time.
#[inline]
pub(crate) fn load_with(
    w: &Workload,
    t: i64,
    (cos_h, sin_h): (f64, f64),
    weekend: bool,
) -> (f64, f64) {
    let l = &w.load;
    // cos(2π (hour − peak) / 24), without a cosine per workload.
    let d = cos_h * l.peak_cos + sin_h * l.peak_sin;
    let weekly = if weekend { l.weekend } else { 1.0 };
    let slow = 1.0 + l.slow_noise * value_noise(w.key ^ SALT_SLOW, t, SLOW_NOISE_PERIOD);
    let spike = if l.spike_prob > 0.0
        && unit(hash2(w.key ^ SALT_SPIKE, t.div_euclid(SPIKE_BUCKET) as u64)) < l.spike_prob
    {
        1.0 + l.spike_mag
    } else {
        1.0
    };
    (((1.0 + l.amp * d) * weekly * slow * spike).max(0.02), d)
}

/// The elastic pods' incarnation (a new pod name each day).
#[inline]
pub(crate) fn incarnation(t: i64) -> i64 {
    (t - INCARNATION_SHIFT).div_euclid(DAY)
}

#[inline]
pub(crate) fn is_incarnation_boundary(bucket_start: i64) -> bool {
    (bucket_start - INCARNATION_SHIFT).rem_euclid(DAY) == 0
}

/// One run of a Job or CronJob pod slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Run {
    pub k: i64,
    pub scheduled: i64,
    pub start: i64,
    pub end: i64,
    pub delete: i64,
}

#[inline]
pub(crate) fn run_index(s: &JobSchedule, t: i64) -> i64 {
    (t - s.offset_ms).div_euclid(s.period_ms)
}

/// Run `k` of a job pod slot: scheduled at `k × period + offset`, started a few seconds later,
/// always finished before the next run starts.
pub(crate) fn job_run(w: &Workload, slot: u32, k: i64) -> Run {
    let s = w.schedule.expect("job workloads have a schedule");
    let (a, b) = unit_pair(hash2(w.key ^ SALT_RUN, k as u64));
    let delay = 1_000 + (a * 8_000.0) as i64 + i64::from(slot) * 700;
    let scheduled = k * s.period_ms + s.offset_ms;
    let start = scheduled + delay;
    let duration = ((s.duration_ms as f64 * (0.7 + 0.6 * b)) as i64)
        .min(s.period_ms - 15_000 - delay)
        .max(20_000);
    Run {
        k,
        scheduled,
        start,
        end: start + duration,
        delete: start + duration + s.keep_ms,
    }
}

/// The leak cycle of a leaking container: first kill `phase` after the pod starts, then every
/// `period`.
#[inline]
pub(crate) fn leak_phase(s: &Series, period: i64) -> i64 {
    (period as f64 * (0.1 + 0.9 * unit(hash2(s.key, SALT_LEAK)))) as i64
}

/// (last (re)start, fraction of the leak cycle done, restarts so far) at `t`.
#[inline]
pub(crate) fn leak_state(start: i64, phase: i64, period: i64, t: i64) -> (i64, f64, i64) {
    let first = start + phase;
    if t < first {
        (
            start,
            ((t - start) + (period - phase)) as f64 / period as f64,
            0,
        )
    } else {
        let n = (t - first).div_euclid(period);
        let last = first + n * period;
        (last, (t - last) as f64 / period as f64, n + 1)
    }
}

/// The OOM kill of a spiky container in hour `hour` (hours since the epoch), if any.
#[inline]
pub(crate) fn spike_kill(s: &Series, per_hour: f64, pod_start: i64, hour: i64) -> Option<i64> {
    let (a, b) = unit_pair(hash2(s.key ^ SALT_OOM, hour as u64));
    if a >= per_hour {
        return None;
    }
    let t = hour * HOUR + 5 * MINUTE + (b * 50.0 * MINUTE as f64) as i64;
    (t > pod_start + 10 * MINUTE).then_some(t)
}

/// One sample of one container.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Sample {
    pub cpu: f64,
    pub throttled: f64,
    pub working_set: i64,
    pub rss: i64,
    pub ephemeral: i64,
}

/// Everything shared by all series at one sample time.
#[derive(Debug, Default)]
pub(crate) struct TickCtx {
    pub t: i64,
    pub load: Vec<f64>,
    pub diurnal: Vec<f64>,
    /// HPA replicas in the current and the previous HPA bucket.
    pub desired: Vec<u32>,
    pub desired_prev: Vec<u32>,
    pub bucket_start: i64,
    pub day_frac: f64,
    /// The HPA bucket `desired` and `desired_prev` were computed for.
    pub bucket: Option<i64>,
}

/// Whether a series runs at a tick, and since when.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Presence {
    /// When the container last started (for the startup peak).
    pub started: i64,
    /// Progress through a job run, in `[0, 1)`.
    pub progress: f64,
    /// Which pod runs in the slot: the elastic incarnation or the job run (0 for static pods).
    pub instance: i64,
}

impl Cluster {
    /// Fills `ctx` for sample time `t`. HPA replicas are reused from the previous call when it
    /// was in the same or the previous HPA bucket (they are a pure function of the bucket).
    pub(crate) fn tick_ctx(&self, t: i64, ctx: &mut TickCtx) {
        let n = self.workloads.len();
        let bucket = t.div_euclid(HPA_BUCKET);
        if ctx.load.len() != n {
            *ctx = TickCtx {
                load: vec![0.0; n],
                diurnal: vec![0.0; n],
                desired: self.workloads.iter().map(|w| w.replicas).collect(),
                desired_prev: self.workloads.iter().map(|w| w.replicas).collect(),
                bucket: None,
                ..TickCtx::default()
            };
        }
        ctx.t = t;
        ctx.bucket_start = bucket * HPA_BUCKET;
        ctx.day_frac = t.rem_euclid(DAY) as f64 / DAY as f64;
        let phase = day_phase(t);
        let weekend = is_weekend(t);
        for (i, w) in self.workloads.iter().enumerate() {
            let (load, d) = load_with(w, t, phase, weekend);
            ctx.load[i] = load;
            ctx.diurnal[i] = d;
        }
        if ctx.bucket != Some(bucket) {
            let next = ctx.bucket == Some(bucket - 1);
            for &wi in &self.hpa_workloads {
                let (wi, w) = (wi as usize, &self.workloads[wi as usize]);
                ctx.desired_prev[wi] = if next {
                    ctx.desired[wi]
                } else {
                    self.desired_replicas(w, bucket - 1)
                };
                ctx.desired[wi] = self.desired_replicas(w, bucket);
            }
            ctx.bucket = Some(bucket);
        }
    }

    /// The replicas the HPA wants in HPA bucket `bucket`: CPU demand at the bucket start over
    /// (request × target), within its bounds. Before the epoch (and without churn) the minimum.
    pub(crate) fn desired_replicas(&self, w: &Workload, bucket: i64) -> u32 {
        let Some(h) = w.hpa else {
            return w.replicas;
        };
        let at = bucket * HPA_BUCKET;
        if !self.config.churn || at < self.config.epoch_ms {
            return h.min_replicas;
        }
        let (load, _) = load_at(w, at);
        let c = &w.containers[0];
        let request = c.cpu_request_cores.unwrap_or(0.1);
        let total = c.usage.cpu_base * f64::from(h.min_replicas) * load;
        // The HPA's 10 % tolerance, roughly.
        let want = (total / (request * h.target_cpu_utilization) - 0.1).ceil();
        (want.max(0.0) as u32).clamp(h.min_replicas, h.max_replicas)
    }

    /// Whether an elastic slot runs in HPA bucket `bucket`.
    pub(crate) fn elastic_active(&self, w: &Workload, slot: u32, bucket: i64) -> bool {
        slot < self.desired_replicas(w, bucket)
    }

    /// When the elastic pod running in `bucket` started (scanning back within its incarnation).
    pub(crate) fn elastic_start(&self, w: &Workload, slot: u32, bucket: i64) -> i64 {
        let mut b = bucket;
        while !is_incarnation_boundary(b * HPA_BUCKET) && self.elastic_active(w, slot, b - 1) {
            b -= 1;
        }
        b * HPA_BUCKET
    }

    /// The job run of a slot in progress at `t`, if any.
    pub(crate) fn active_run(&self, w: &Workload, slot: u32, t: i64) -> Option<Run> {
        let s = w.schedule?;
        let r = job_run(w, slot, run_index(&s, t));
        (r.scheduled >= self.config.epoch_ms && r.start <= t && t < r.end).then_some(r)
    }

    /// Whether series `s` runs at the tick, and since when.
    #[inline]
    pub(crate) fn presence(&self, s: &Series, ctx: &TickCtx) -> Option<Presence> {
        let t = ctx.t;
        match s.kind {
            PodKind::Static => (t >= s.start_ms).then_some(Presence {
                started: s.start_ms,
                progress: 0.0,
                instance: 0,
            }),
            PodKind::Elastic => {
                let wi = s.workload as usize;
                let slot = self.pods[s.pod as usize].slot;
                if slot >= ctx.desired[wi] {
                    return None;
                }
                let fresh =
                    is_incarnation_boundary(ctx.bucket_start) || slot >= ctx.desired_prev[wi];
                Some(Presence {
                    started: if fresh {
                        ctx.bucket_start
                    } else {
                        ctx.bucket_start - HPA_BUCKET
                    },
                    progress: 0.0,
                    instance: incarnation(t),
                })
            }
            PodKind::Job => {
                let w = &self.workloads[s.workload as usize];
                let r = self.active_run(w, self.pods[s.pod as usize].slot, t)?;
                Some(Presence {
                    started: r.start,
                    progress: (t - r.start) as f64 / (r.end - r.start) as f64,
                    instance: r.k,
                })
            }
        }
    }

    /// One sample of series `s` at the tick. `step_s` is the sample interval (for throttled
    /// seconds).
    #[inline]
    pub(crate) fn sample(&self, s: &Series, p: Presence, ctx: &TickCtx, step_s: f64) -> Sample {
        let wi = s.workload as usize;
        let t = ctx.t;
        let (n1, n2) = unit_pair(hash2(s.key, t as u64));
        let mut started = p.started;
        let normal_ws =
            s.mem_base * (1.0 + s.mem_amp * ctx.diurnal[wi] + s.mem_noise * (2.0 * n2 - 1.0));
        let ws = match s.profile {
            Profile::MemoryLeak | Profile::MemorySpikes => {
                self.oom_prone_working_set(s, t, normal_ws, n2, &mut started)
            }
            Profile::Batch => {
                s.mem_base
                    * (0.3 + 0.7 * p.progress.sqrt())
                    * (1.0 + s.mem_noise * (2.0 * n2 - 1.0))
            }
            _ => normal_ws,
        };
        let ws = ws.min(s.mem_limit).max(MIN_WORKING_SET);

        let share = if s.hpa_min > 0.0 {
            s.hpa_min / f64::from(ctx.desired[wi].max(1))
        } else {
            1.0
        };
        let mut demand = s.cpu_base * ctx.load[wi] * share * (1.0 + s.cpu_noise * (2.0 * n1 - 1.0));
        let age = t - started;
        if age >= 0 && age < s.startup_ms {
            let f = 1.0 - age as f64 / s.startup_ms as f64;
            demand += s.startup_cpu * f * f;
        }
        let demand = demand.max(0.0001);
        let (cpu, throttled) = if demand > s.cpu_limit {
            (s.cpu_limit, step_s * (demand - s.cpu_limit) / demand)
        } else {
            (demand, 0.0)
        };
        Sample {
            cpu,
            throttled,
            working_set: ws as i64,
            rss: (ws * s.rss_ratio) as i64,
            ephemeral: (s.eph_base * (1.0 + 0.5 * ctx.day_frac + 0.5 * p.progress)) as i64,
        }
    }

    /// The working set of a leaking or spiking container, and when it last (re)started.
    #[cold]
    fn oom_prone_working_set(
        &self,
        s: &Series,
        t: i64,
        normal: f64,
        noise: f64,
        started: &mut i64,
    ) -> f64 {
        let u = &self.workloads[s.workload as usize].containers[s.container as usize].usage;
        let limit = s.mem_limit;
        if s.profile == Profile::MemoryLeak {
            let phase = leak_phase(s, u.leak_period_ms);
            let (restart, frac, _) = leak_state(s.start_ms, phase, u.leak_period_ms, t);
            *started = (*started).max(restart);
            return (u.mem_base + (limit - u.mem_base) * frac)
                * (1.0 + 0.003 * (2.0 * noise - 1.0));
        }
        match spike_kill(s, u.oom_per_hour, s.start_ms, t.div_euclid(HOUR)) {
            Some(kill) if t >= kill => {
                *started = (*started).max(kill);
                normal
            }
            Some(kill) if t >= kill - OOM_RAMP => {
                normal + (limit - normal) * ((t - (kill - OOM_RAMP)) as f64 / OOM_RAMP as f64)
            }
            _ => normal,
        }
    }

    /// A node's own usage (kubelet, container runtime, OS) at `t`.
    #[inline]
    pub(crate) fn node_overhead(&self, node: usize, t: i64) -> (f64, f64) {
        let n = &self.nodes[node];
        let (a, b) = unit_pair(hash2(n.key ^ SALT_NODE, t as u64));
        (
            n.overhead_cpu * (0.85 + 0.3 * a),
            n.overhead_mem * (0.97 + 0.06 * b),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weekends_and_hours() {
        // 2025-01-04 was a Saturday, 2025-01-06 a Monday.
        let sat = 1_735_948_800_000;
        assert!(is_weekend(sat));
        assert!(is_weekend(sat + DAY));
        assert!(!is_weekend(sat + 2 * DAY));
        assert_eq!(hour_of_day(sat + 3 * HOUR + 30 * MINUTE), 3.5);
    }

    #[test]
    fn leak_cycles_wrap_at_the_kill() {
        let (start, phase, period) = (1_000, 500, 2_000);
        assert_eq!(leak_state(start, phase, period, 1_000), (1_000, 0.75, 0));
        let (last, frac, n) = leak_state(start, phase, period, 1_499);
        assert_eq!((last, n), (1_000, 0));
        assert!(frac > 0.99 && frac < 1.0);
        assert_eq!(leak_state(start, phase, period, 1_500), (1_500, 0.0, 1));
        assert_eq!(leak_state(start, phase, period, 3_500), (3_500, 0.0, 2));
    }

    #[test]
    fn incarnations_turn_over_at_three_utc() {
        assert!(is_incarnation_boundary(3 * HOUR));
        assert!(!is_incarnation_boundary(4 * HOUR));
        assert_eq!(incarnation(3 * HOUR - 1) + 1, incarnation(3 * HOUR));
    }
}
