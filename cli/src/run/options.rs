//! Docker's option syntax: sizes and CPU counts (mounts: `mounts`).

use anyhow::{bail, Context};

/// "64m", "1g", "512k", "1048576", "100mb": bytes.
pub fn parse_size(s: &str) -> anyhow::Result<i64> {
    let t = s.trim().to_ascii_lowercase();
    let t = t
        .strip_suffix('b')
        .filter(|r| !r.is_empty() && r.chars().last().is_some_and(|c| c.is_ascii_alphabetic()))
        .unwrap_or(&t);
    let (num, mult) = match t.chars().last() {
        Some('k') => (&t[..t.len() - 1], 1i64 << 10),
        Some('m') => (&t[..t.len() - 1], 1 << 20),
        Some('g') => (&t[..t.len() - 1], 1 << 30),
        Some('t') => (&t[..t.len() - 1], 1 << 40),
        Some(c) if c.is_ascii_digit() => (t, 1),
        _ => bail!("invalid size {s:?} (expected a number with an optional k, m, g suffix)"),
    };
    let n: f64 = num.parse().with_context(|| format!("invalid size {s:?}"))?;
    if !(n.is_finite() && n > 0.0) {
        bail!("invalid size {s:?}: must be positive");
    }
    Ok((n * mult as f64) as i64)
}

pub const CPU_PERIOD_US: u64 = 100_000;

/// `--cpus 1.5` → CFS quota in microseconds per 100 ms period.
pub fn parse_cpus(s: &str) -> anyhow::Result<i64> {
    let n: f64 = s
        .trim()
        .parse()
        .with_context(|| format!("invalid --cpus {s:?}"))?;
    if !(n.is_finite() && n > 0.0) {
        bail!("invalid --cpus {s:?}: must be a positive number");
    }
    Ok((n * CPU_PERIOD_US as f64).round() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64m").unwrap(), 64 << 20);
        assert_eq!(parse_size("64MB").unwrap(), 64 << 20);
        assert_eq!(parse_size("1g").unwrap(), 1 << 30);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("1.5k").unwrap(), 1536);
        assert!(parse_size("lots").is_err());
        assert!(parse_size("-1m").is_err());
        assert!(parse_size("").is_err());
    }

    #[test]
    fn cpus() {
        assert_eq!(parse_cpus("0.5").unwrap(), 50_000);
        assert_eq!(parse_cpus("2").unwrap(), 200_000);
        assert!(parse_cpus("0").is_err());
        assert!(parse_cpus("x").is_err());
    }
}
