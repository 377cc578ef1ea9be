//! The kernel command line: the VMM's defaults first, then the host
//! adaptations, then devices, then what the user asked for (the kernel lets
//! later parameters override earlier ones).

use linux_loader::cmdline::Cmdline;

use crate::arch::x86_64::layout::CMDLINE_MAX_SIZE;

/// Serial console on the one UART, reboot through the i8042 reset line (no
/// keyboard driver needed), reboot at once on panic so the VMM exits, and
/// no console chatter below errors (every byte is a VM exit).
pub const DEFAULT_CMDLINE: &str =
    "console=ttyS0 reboot=k panic=-1 quiet tsc=reliable mitigations=off";

#[derive(Debug, thiserror::Error)]
pub enum CmdlineError {
    #[error("kernel command line is too long or invalid: {0}")]
    Invalid(linux_loader::cmdline::Error),
}

/// Starts a command line with the VMM's defaults and, when asked, the PVM
/// compatibility parameters.
pub fn base_cmdline(pvm_compat: Option<&str>) -> Result<Cmdline, CmdlineError> {
    let mut cmdline = Cmdline::new(CMDLINE_MAX_SIZE).map_err(CmdlineError::Invalid)?;
    cmdline
        .insert_str(DEFAULT_CMDLINE)
        .map_err(CmdlineError::Invalid)?;
    if let Some(extra) = pvm_compat {
        cmdline.insert_str(extra).map_err(CmdlineError::Invalid)?;
    }
    Ok(cmdline)
}

/// Appends the user's parameters (and init arguments after `--`).
pub fn append_user(cmdline: &mut Cmdline, user: &str) -> Result<(), CmdlineError> {
    let user = user.trim();
    if user.is_empty() {
        return Ok(());
    }
    let (params, init_args) = match user.split_once(" -- ") {
        Some((p, a)) => (p.trim(), Some(a.trim())),
        None => (user, None),
    };
    if !params.is_empty() {
        cmdline.insert_str(params).map_err(CmdlineError::Invalid)?;
    }
    if let Some(args) = init_args.filter(|a| !a.is_empty()) {
        cmdline
            .insert_init_args(args)
            .map_err(CmdlineError::Invalid)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(c: &Cmdline) -> String {
        c.as_cstring().unwrap().into_string().unwrap()
    }

    #[test]
    fn defaults_then_compat_then_user() {
        let mut c = base_cmdline(Some("noxsave pvm_syscall_fault")).unwrap();
        append_user(&mut c, "root=/dev/vda loglevel=7").unwrap();
        let line = s(&c);
        assert!(line.starts_with("console=ttyS0 reboot=k panic=-1"));
        let compat = line.find("noxsave").unwrap();
        let user = line.find("root=/dev/vda").unwrap();
        assert!(compat < user, "{line}");
    }

    #[test]
    fn no_compat_on_real_hosts() {
        let c = base_cmdline(None).unwrap();
        assert!(!s(&c).contains("clearcpuid"));
    }

    #[test]
    fn init_args_after_double_dash() {
        let mut c = base_cmdline(None).unwrap();
        append_user(&mut c, "init=/bin/sh -- -c true").unwrap();
        assert!(s(&c).ends_with("init=/bin/sh -- -c true"), "{}", s(&c));
    }

    #[test]
    fn too_long_is_an_error() {
        let mut c = base_cmdline(None).unwrap();
        assert!(append_user(&mut c, &"x".repeat(CMDLINE_MAX_SIZE)).is_err());
    }
}
