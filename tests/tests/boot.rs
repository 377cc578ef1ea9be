//! `bulkhead boot`: the real guest kernel to userspace, and every way a
//! boot can go wrong ending in one clear line and a non-zero exit.

use std::process::{Command, Stdio};

use bulkhead_tests::{bulkhead, bulkhead_bin, host_is_pvm, kernel, tempdir, test_initramfs, Run};

fn kernel_str() -> String {
    kernel().display().to_string()
}

/// The error output is one line naming the problem.
fn assert_one_line_error(run: &Run, needle: &str) {
    assert_ne!(run.code, Some(0), "{run:?}");
    assert!(run.code.is_some(), "killed by a signal: {run:?}");
    let lines: Vec<&str> = run.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "expected one error line: {run:?}");
    assert!(lines[0].starts_with("bulkhead: "), "{run:?}");
    assert!(lines[0].contains(needle), "expected {needle:?}: {run:?}");
    assert!(!run.stderr.contains("panicked"), "{run:?}");
}

#[test]
fn boots_to_userspace_forks_and_exits_cleanly() {
    let dir = tempdir();
    let initrd = test_initramfs(dir.path());
    let run = bulkhead(&[
        "boot",
        "--kernel",
        &kernel_str(),
        "--initrd",
        initrd.to_str().unwrap(),
    ]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(
        run.stdout.contains("bulkhead-test-init: pid 1\n"),
        "{run:?}"
    );
    assert!(
        run.stdout
            .contains("bulkhead-test-init: child says hello\n"),
        "{run:?}"
    );
    assert!(
        run.stdout.contains("bulkhead-test-init: child exit 42\n"),
        "{run:?}"
    );
}

#[test]
fn boots_with_two_vcpus() {
    let dir = tempdir();
    let initrd = test_initramfs(dir.path());
    // Kernel messages on: the boot CPU must report both processors.
    let run = bulkhead(&[
        "boot",
        "--kernel",
        &kernel_str(),
        "--initrd",
        initrd.to_str().unwrap(),
        "--vcpus",
        "2",
        "--cmdline",
        "loglevel=7",
    ]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(
        run.stdout.contains("Total of 2 processors activated"),
        "{run:?}"
    );
    assert!(
        run.stdout.contains("bulkhead-test-init: child exit 42\n"),
        "{run:?}"
    );
}

#[test]
fn missing_kernel() {
    let run = bulkhead(&["boot", "--kernel", "/nonexistent/vmlinux"]);
    assert_one_line_error(&run, "kernel image /nonexistent/vmlinux does not exist");
}

#[test]
fn kernel_that_is_not_elf() {
    let dir = tempdir();
    let bz = dir.path().join("bzImage");
    std::fs::write(&bz, vec![0x4d; 4096]).unwrap();
    let run = bulkhead(&["boot", "--kernel", bz.to_str().unwrap()]);
    assert_one_line_error(&run, "is not an ELF file");
}

#[test]
fn missing_initrd() {
    let run = bulkhead(&[
        "boot",
        "--kernel",
        &kernel_str(),
        "--initrd",
        "/nonexistent/initrd",
    ]);
    assert_one_line_error(&run, "initrd /nonexistent/initrd does not exist");
}

#[test]
fn too_little_memory() {
    let run = bulkhead(&["boot", "--kernel", &kernel_str(), "--mem-mib", "8"]);
    assert_one_line_error(&run, "guest memory of 8 MiB is too small");
}

#[test]
fn initrd_larger_than_memory() {
    let dir = tempdir();
    let big = dir.path().join("big.cpio");
    let f = std::fs::File::create(&big).unwrap();
    f.set_len(40 << 20).unwrap();
    let run = bulkhead(&[
        "boot",
        "--kernel",
        &kernel_str(),
        "--initrd",
        big.to_str().unwrap(),
        "--mem-mib",
        "32",
    ]);
    assert_one_line_error(&run, "guest memory is too small");
}

#[test]
fn no_kvm_device() {
    // A private mount namespace with an empty /dev: no /dev/kvm in it.
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(format!(
            "mount -t tmpfs none /dev && exec {} boot --kernel {}",
            bulkhead_bin().display(),
            kernel().display()
        ))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_one_line_error(&Run::from_output(out), "/dev/kvm does not exist");
}

#[test]
fn no_permission_on_kvm() {
    // nobody cannot open the root-only /dev/kvm.
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(bulkhead_bin())
        .args(["boot", "--kernel"])
        .arg(kernel())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let run = Run::from_output(out);
    if run.stderr.contains("kernel image") {
        // The kernel cache is not readable by nobody on this machine.
        panic!("kernel not readable by nobody: {run:?}");
    }
    assert_one_line_error(&run, "no permission to open /dev/kvm");
}

#[test]
fn guest_triple_fault_is_reported() {
    let dir = tempdir();
    let k = dir.path().join("ud2.elf");
    // ud2 with an IDT that has no valid gates: #UD -> #GP -> #DF -> shutdown.
    bulkhead_tests::elf::write_code_elf(&k, &[0x0f, 0x0b]);
    let run = bulkhead(&["boot", "--kernel", k.to_str().unwrap()]);
    assert_one_line_error(&run, "guest triple fault on vCPU 0 (RIP 0x1000000)");
}

#[test]
fn unemulatable_instruction_is_reported_with_rip_and_bytes() {
    let dir = tempdir();
    let k = dir.path().join("int3.elf");
    // nop; int3. On PVM the instruction emulator cannot run int3; on
    // VT-x/AMD-V it raises #BP with no IDT, which ends in a triple fault.
    bulkhead_tests::elf::write_code_elf(&k, &[0x90, 0xcc, 0xf4]);
    let run = bulkhead(&["boot", "--kernel", k.to_str().unwrap()]);
    if host_is_pvm() {
        assert_one_line_error(&run, "KVM internal error on vCPU 0");
        assert!(run.stderr.contains("RIP 0x1000001"), "{run:?}");
        assert!(run.stderr.contains("instruction bytes [cc f4"), "{run:?}");
    } else {
        assert_one_line_error(&run, "guest triple fault");
    }
}
