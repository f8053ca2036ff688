//! Compiles the eBPF programs in `ebpf/` with clang (`-target bpf -g -O2`) into OUT_DIR.
//!
//! clang comes from Debian's clang-19 (tests/run.sh installs it; `TALLY_CLANG` overrides the
//! binary). Without clang the crate still builds, so agents that never load BPF are not held
//! back: the object is left empty, the build prints a warning, and loading eBPF at run time
//! fails with an error that says why (the agent then falls back to conntrack).

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let source = manifest.join("../../ebpf/netmon.bpf.c");
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("netmon.bpf.o");
    println!("cargo:rerun-if-changed={}", source.display());
    println!("cargo:rerun-if-env-changed=TALLY_CLANG");

    let arch = match std::env::var("CARGO_CFG_TARGET_ARCH").unwrap().as_str() {
        "x86_64" => "x86_64-linux-gnu",
        "aarch64" => "aarch64-linux-gnu",
        other => panic!("no multiarch include directory known for {other}"),
    };
    let clangs: Vec<String> = match std::env::var("TALLY_CLANG") {
        Ok(clang) => vec![clang],
        Err(_) => vec!["clang-19".into(), "clang".into()],
    };
    let mut failure = String::new();
    for clang in &clangs {
        let result = Command::new(clang)
            .args(["-target", "bpf", "-g", "-O2", "-Wall", "-Werror"])
            .arg(format!("-I/usr/include/{arch}"))
            .arg("-c")
            .arg(&source)
            .arg("-o")
            .arg(&out)
            .output();
        match result {
            Ok(output) if output.status.success() => {
                println!("cargo:rustc-env=TALLY_NETMON_BPF=built");
                return;
            }
            Ok(output) => {
                // clang ran and refused the program: that is a bug to fix, not to hide.
                panic!(
                    "{clang} failed to compile {}:\n{}",
                    source.display(),
                    String::from_utf8_lossy(&output.stderr)
                );
            }
            Err(e) => failure.push_str(&format!("{clang}: {e}; ")),
        }
    }
    println!(
        "cargo:warning=eBPF programs not built (no clang: {failure}install clang-19 and libbpf-dev)"
    );
    std::fs::write(&out, b"").unwrap();
    // Build again once clang is installed (a path that does not exist yet reruns this script
    // on every build until it does).
    println!("cargo:rerun-if-changed=/usr/bin/clang-19");
    println!(
        "cargo:rustc-env=TALLY_NETMON_BPF=not built: clang was not found when the agent was compiled ({failure}install clang-19 and libbpf-dev)"
    );
}
