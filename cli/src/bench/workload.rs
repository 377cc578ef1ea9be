//! The commands every system runs.

/// One workload: the command, and the exact output it must produce (so a
/// run that "succeeds" without doing the work does not count).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Workload {
    pub name: &'static str,
    pub args: &'static [&'static str],
    pub stdout: &'static str,
}

pub const WORKLOADS: [Workload; 2] = [
    Workload {
        name: "true",
        args: &["true"],
        stdout: "",
    },
    Workload {
        name: "echo",
        args: &["echo", "bulkhead-bench"],
        stdout: "bulkhead-bench\n",
    },
];

impl Workload {
    /// The metric name of `what` for this workload.
    pub fn metric(&self, what: &str) -> String {
        format!("{}: {what}", self.name)
    }

    /// Checks a run's captured stdout.
    pub fn check_output(&self, stdout: &[u8]) -> anyhow::Result<()> {
        if stdout != self.stdout.as_bytes() {
            anyhow::bail!(
                "`{}` printed {:?}, expected {:?}",
                self.args.join(" "),
                String::from_utf8_lossy(stdout),
                self.stdout
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_must_match_exactly() {
        let echo = WORKLOADS[1];
        assert!(echo.check_output(b"bulkhead-bench\n").is_ok());
        assert!(echo.check_output(b"").is_err());
        assert!(WORKLOADS[0].check_output(b"").is_ok());
        assert!(WORKLOADS[0].check_output(b"x").is_err());
        assert_eq!(echo.metric("total"), "echo: total");
    }
}
