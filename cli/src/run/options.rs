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

/// The scratch disk's size in MiB from `--storage-opt size=SIZE` (Docker's
/// only per-container storage option), `default` without one.
pub fn scratch_mib(storage_opts: &[String], default: u64) -> anyhow::Result<u64> {
    let mut mib = default;
    for opt in storage_opts {
        let Some(size) = opt.strip_prefix("size=") else {
            bail!("invalid --storage-opt {opt:?}: only size=SIZE is supported");
        };
        let bytes = parse_size(size).context("invalid --storage-opt")?;
        mib = (bytes as u64).div_ceil(1 << 20);
        if mib < 8 {
            bail!("invalid --storage-opt {opt:?}: the writable layer needs at least 8m");
        }
    }
    Ok(mib)
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

    #[test]
    fn storage_opt_size_sets_the_scratch_disk() {
        let opts = |o: &[&str]| o.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(scratch_mib(&[], 1024).unwrap(), 1024);
        assert_eq!(scratch_mib(&opts(&["size=16m"]), 1024).unwrap(), 16);
        assert_eq!(scratch_mib(&opts(&["size=2g"]), 1024).unwrap(), 2048);
        assert_eq!(scratch_mib(&opts(&["size=10000k"]), 1024).unwrap(), 10);
        for bad in ["size=4m", "size=", "size=x", "overlay2.size=1g"] {
            assert!(scratch_mib(&opts(&[bad]), 1024).is_err(), "{bad}");
        }
    }
}
