//! Finding the virtiofsd binary.

use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::ShareError;

/// Where distributions install it (Debian's `virtiofsd` package, then
/// QEMU's older location).
const SYSTEM: [&str; 2] = ["/usr/libexec/virtiofsd", "/usr/lib/qemu/virtiofsd"];

/// `$BULKHEAD_VIRTIOFSD`, else `virtiofsd` on `$PATH`, else
/// `~/.cargo/bin/virtiofsd` (where `cargo install` and scripts/deps.sh put
/// it, often not on root's PATH), else the system locations.
pub fn locate() -> Result<PathBuf, ShareError> {
    find(
        std::env::var_os("BULKHEAD_VIRTIOFSD"),
        std::env::var_os("PATH"),
        std::env::var_os("HOME"),
        &SYSTEM.map(Path::new),
    )
}

fn find(
    over: Option<OsString>,
    path: Option<OsString>,
    home: Option<OsString>,
    system: &[&Path],
) -> Result<PathBuf, ShareError> {
    if let Some(p) = over.filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        return if is_executable(&p) {
            Ok(p)
        } else {
            Err(ShareError::BadOverride(p))
        };
    }
    let on_path = path
        .iter()
        .flat_map(std::env::split_paths)
        .filter(|dir| dir.is_absolute())
        .map(|dir| dir.join("virtiofsd"));
    let cargo = home.map(|h| PathBuf::from(h).join(".cargo/bin/virtiofsd"));
    let fixed = system.iter().map(|p| p.to_path_buf());
    if let Some(found) = on_path.chain(cargo).chain(fixed).find(|p| is_executable(p)) {
        return Ok(found);
    }
    let looked = [
        "$BULKHEAD_VIRTIOFSD",
        "virtiofsd on $PATH",
        "~/.cargo/bin/virtiofsd",
    ]
    .into_iter()
    .map(str::to_string)
    .chain(system.iter().map(|p| p.display().to_string()))
    .collect::<Vec<_>>()
    .join(", ");
    Err(ShareError::NotFound { looked })
}

fn is_executable(p: &Path) -> bool {
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn executable(path: &Path) -> PathBuf {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path.to_path_buf()
    }

    #[test]
    fn search_order() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        let (bin, home, sys) = (
            root.join("bin"),
            root.join("home"),
            root.join("sys/virtiofsd"),
        );
        let path = || Some(OsString::from(format!("relative:{}", bin.display())));
        let home_var = || Some(home.clone().into_os_string());
        let system = [sys.as_path()];

        let none = find(None, path(), home_var(), &system)
            .unwrap_err()
            .to_string();
        assert!(
            none.contains(
                "looked for $BULKHEAD_VIRTIOFSD, virtiofsd on $PATH, ~/.cargo/bin/virtiofsd"
            ) && none.contains(&sys.display().to_string())
                && none.contains("scripts/deps.sh")
                && none.contains("cargo install virtiofsd")
                && !none.contains('\n'),
            "{none}"
        );
        // Present but not executable is not found.
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::write(bin.join("virtiofsd"), "").unwrap();
        assert!(find(None, path(), home_var(), &system).is_err());

        let sys = executable(&sys);
        assert_eq!(find(None, path(), home_var(), &system).unwrap(), sys);
        let cargo = executable(&home.join(".cargo/bin/virtiofsd"));
        assert_eq!(find(None, path(), home_var(), &system).unwrap(), cargo);
        let on_path = executable(&bin.join("virtiofsd"));
        assert_eq!(find(None, path(), home_var(), &system).unwrap(), on_path);

        let over = executable(&root.join("mine"));
        let found = find(Some(over.clone().into()), path(), home_var(), &system);
        assert_eq!(found.unwrap(), over);
        // An override that points nowhere is an error, not a fallback.
        let missing = root.join("missing");
        let err = find(Some(missing.clone().into()), path(), home_var(), &system).unwrap_err();
        assert!(matches!(err, ShareError::BadOverride(p) if p == missing));
    }
}
