//! Writes one benchmark's section of RESULTS.md, replacing the previous run's.

use std::path::Path;

pub fn write_section(path: &Path, name: &str, command: &str, body: &str) -> std::io::Result<()> {
    let existing = std::fs::read_to_string(path).unwrap_or_else(|_| {
        "# Benchmark results\n\nWritten by `tally-bench` (benchmarks/src/main.rs); each section says the command, \
         the machine and the build it measured. Benchmarks measure, they never assert on time.\n"
            .to_string()
    });
    let start = format!("<!-- bench:{name} -->");
    let end = format!("<!-- /bench:{name} -->");
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    let section = format!(
        "{start}\n## {name}\n\n`tally-bench {command}` ({profile} build), {} UTC, commit {}  \nMachine: {}\n\n{body}\n{end}",
        chrono::Utc::now().format("%Y-%m-%d %H:%M"),
        commit(),
        crate::machine::describe(),
    );
    let updated = match (existing.find(&start), existing.find(&end)) {
        (Some(s), Some(e)) if e > s => {
            format!("{}{section}{}", &existing[..s], &existing[e + end.len()..])
        }
        _ => format!("{}\n{section}\n", existing.trim_end()),
    };
    std::fs::write(path, updated)
}

fn commit() -> String {
    std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}
