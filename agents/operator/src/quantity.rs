//! Kubernetes quantities (`250m`, `1.5`, `512Mi`, `1e3`) to numbers and back.
//!
//! The operator reads what a workload sets now and writes what it decided; both sides use
//! quantities, the appliance uses cores and bytes.

/// The value of a quantity (cores for CPU, bytes for memory), or why it is not one.
pub fn parse(text: &str) -> Result<f64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a quantity (like 250m, 2, 512Mi)"))?;
    let factor = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        exp if exp.starts_with(['e', 'E']) => {
            let power: i32 = exp[1..]
                .parse()
                .map_err(|_| format!("`{text}` is not a quantity (like 250m, 2, 512Mi)"))?;
            10f64.powi(power)
        }
        other => {
            return Err(format!(
                "`{text}` has an unknown suffix `{other}` (use m, k, M, G, Ki, Mi, Gi, ...)"
            ));
        }
    };
    if value < 0.0 {
        return Err(format!("`{text}` is negative"));
    }
    Ok(value * factor)
}

/// CPU cores as a quantity: whole cores plainly, otherwise millicores (rounded up, so a
/// positive value never becomes zero).
pub fn cpu(cores: f64) -> String {
    let millis = (cores * 1000.0 - 1e-6).ceil().max(0.0) as i64;
    if millis % 1000 == 0 {
        format!("{}", millis / 1000)
    } else {
        format!("{millis}m")
    }
}

/// Bytes as a quantity: `Mi` or `Gi` when exact, otherwise bytes.
pub fn memory(bytes: i64) -> String {
    const MI: i64 = 1 << 20;
    const GI: i64 = 1 << 30;
    if bytes != 0 && bytes % GI == 0 {
        format!("{}Gi", bytes / GI)
    } else if bytes != 0 && bytes % MI == 0 {
        format!("{}Mi", bytes / MI)
    } else {
        bytes.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_usual_forms() {
        assert_eq!(parse("250m").unwrap(), 0.25);
        assert_eq!(parse("2").unwrap(), 2.0);
        assert_eq!(parse("1.5").unwrap(), 1.5);
        assert_eq!(parse("512Mi").unwrap(), 512.0 * 1024.0 * 1024.0);
        assert_eq!(parse("1G").unwrap(), 1e9);
        assert_eq!(parse("1e3").unwrap(), 1000.0);
        assert_eq!(parse("100k").unwrap(), 100_000.0);
        assert!(parse("abc").unwrap_err().contains("not a quantity"));
        assert!(parse("5Qi").unwrap_err().contains("unknown suffix `Qi`"));
    }

    #[test]
    fn formats_cpu_and_memory_round_trip() {
        assert_eq!(cpu(0.25), "250m");
        assert_eq!(cpu(2.0), "2");
        assert_eq!(cpu(0.0001), "1m");
        assert_eq!(cpu(0.1 + 0.2), "300m");
        assert_eq!(memory(64 << 20), "64Mi");
        assert_eq!(memory(2 << 30), "2Gi");
        assert_eq!(memory(1000), "1000");
        for text in ["250m", "2", "64Mi", "2Gi"] {
            let v = parse(text).unwrap();
            let back = if text.ends_with('i') {
                memory(v as i64)
            } else {
                cpu(v)
            };
            assert_eq!(back, text);
        }
    }
}
