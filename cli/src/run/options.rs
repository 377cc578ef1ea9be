//! Docker's option syntax: sizes, CPU counts, volumes.

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

/// `-v NAME:/path[:ro|rw]`: a named volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeArg {
    pub name: String,
    pub destination: String,
    pub read_only: bool,
}

pub fn parse_volume(s: &str) -> anyhow::Result<VolumeArg> {
    let parts: Vec<&str> = s.split(':').collect();
    let (name, dest, mode) = match parts.as_slice() {
        [n, d] => (*n, *d, None),
        [n, d, m] => (*n, *d, Some(*m)),
        _ => bail!("invalid volume {s:?} (expected NAME:/path[:ro])"),
    };
    if name.starts_with('/') || name.starts_with('.') {
        bail!(
            "invalid volume {s:?}: bind mounts of host paths are not supported, only named volumes"
        );
    }
    bulkhead_rootfs::validate_volume_name(name).with_context(|| format!("invalid volume {s:?}"))?;
    if !dest.starts_with('/') || dest == "/" {
        bail!("invalid volume {s:?}: the container path must be absolute and not /");
    }
    let read_only = match mode {
        None | Some("rw") => false,
        Some("ro") => true,
        Some(m) => bail!("invalid volume {s:?}: unknown mode {m:?} (expected ro or rw)"),
    };
    Ok(VolumeArg {
        name: name.to_string(),
        destination: dest.to_string(),
        read_only,
    })
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
    fn volumes() {
        assert_eq!(
            parse_volume("data:/data:ro").unwrap(),
            VolumeArg {
                name: "data".into(),
                destination: "/data".into(),
                read_only: true
            }
        );
        assert!(!parse_volume("data:/data").unwrap().read_only);
        assert!(parse_volume("/host:/data").is_err());
        assert!(parse_volume("data:rel").is_err());
        assert!(parse_volume("data:/").is_err());
        assert!(parse_volume("data:/x:rx").is_err());
        assert!(parse_volume("data").is_err());
    }
}
