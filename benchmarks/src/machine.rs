//! What machine a benchmark ran on, and how much CPU and memory a process used.

/// CPU seconds (user + system) a process has used, from /proc/PID/stat.
pub fn process_cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    // utime and stime are fields 14 and 15; index 11 and 12 after the state field.
    (ticks(11) + ticks(12)) / per_second
}

fn status_kib(path: &str, key: &str) -> u64 {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Peak resident memory (VmHWM) of a process, in bytes.
pub fn process_peak_rss(pid: u32) -> u64 {
    status_kib(&format!("/proc/{pid}/status"), "VmHWM:") * 1024
}

pub fn self_peak_rss() -> u64 {
    status_kib("/proc/self/status", "VmHWM:") * 1024
}

pub fn self_rss() -> u64 {
    status_kib("/proc/self/status", "VmRSS:") * 1024
}

pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
}

/// One line describing the machine: CPU model, cores, memory, kernel, and the load average
/// when the benchmark started (other work on a 2-core machine shows in every number).
pub fn describe() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let memory = status_kib("/proc/meminfo", "MemTotal:") * 1024;
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    format!(
        "{model}, {cores} cores, {:.1} GiB memory, Linux {}, load average {} at start",
        memory as f64 / (1u64 << 30) as f64,
        kernel.trim(),
        load.join(" ")
    )
}
