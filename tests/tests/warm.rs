//! Warm starts: `bulkhead run` restores a template (a snapshot of a booted
//! guest with its agent ready) instead of booting. One template serves any
//! image and any volumes; clones of it are distinct machines; a broken
//! template is made again, never trusted.

use std::thread;

use bulkhead_tests::oci::{busybox_layer, file, write_layout};
use bulkhead_tests::{restored_template, tempdir, Root, Run};
use serde_json::json;

/// `NAME=value` lines of a run's output.
fn field<'a>(run: &'a Run, name: &str) -> &'a str {
    let prefix = format!("{name}=");
    run.stdout
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {name}= line: {run:?}"))
}

#[test]
fn two_clones_of_one_template_are_distinct_machines() {
    let script = "echo host=$(hostname); \
                  echo random=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \\n'); \
                  echo now=$(date +%s); sleep 1; echo done";
    // Both at once: whichever comes first makes the template if needed.
    let runs: Vec<Run> = ["clone-a", "clone-b"]
        .map(|name| {
            thread::spawn(move || {
                Root::new().bulkhead(&[
                    "run",
                    "--timings",
                    "--hostname",
                    name,
                    "busybox",
                    "sh",
                    "-c",
                    script,
                ])
            })
        })
        .into_iter()
        .map(|t| t.join().unwrap())
        .collect();
    for (run, name) in runs.iter().zip(["clone-a", "clone-b"]) {
        assert_eq!(run.code, Some(0), "{run:?}");
        assert_eq!(field(run, "host"), name, "{run:?}");
        assert_eq!(field(run, "random").len(), 48, "{run:?}");
        assert!(run.stdout.contains("done\n"), "{run:?}");
        // The guest's wall clock is the host's, not the template's.
        let now: u64 = field(run, "now").parse().unwrap();
        let host = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!(
            host.abs_diff(now) < 600,
            "guest clock {now}, host {host}: {run:?}"
        );
    }
    let (a, b) = (&runs[0], &runs[1]);
    let template = restored_template(a).expect("first clone was not restored");
    assert_eq!(
        restored_template(b).as_deref(),
        Some(template.as_str()),
        "{b:?}"
    );
    assert_ne!(
        field(a, "random"),
        field(b, "random"),
        "clones share an RNG state"
    );
}

#[test]
fn a_volume_and_another_image_use_the_same_template() {
    let root = Root::new();
    let work = tempdir();
    let run = root.bulkhead(&[
        "run",
        "--timings",
        "-v",
        "data:/data",
        "busybox",
        "sh",
        "-c",
        "echo kept > /data/f; ls -a /; echo listed",
    ]);
    assert_eq!(run.code, Some(0), "{run:?}");
    // The container's / is exactly the image's tree.
    assert!(!run.stdout.contains("lost+found"), "{run:?}");
    assert!(run.stdout.contains("listed\n"), "{run:?}");
    let first = restored_template(&run).expect("volume run was not restored");

    let layers = vec![
        busybox_layer(),
        vec![file("srv/hello", b"from layout\n", 0o644)],
    ];
    let layout = write_layout(
        &work.path().join("layout"),
        &layers,
        json!({"Cmd": ["/bin/cat", "/srv/hello", "/data/f"]}),
        "v1",
    );
    let image = format!("oci:{}:v1", layout.display());
    let run = root.bulkhead(&["run", "--timings", "-v", "data:/data:ro", &image]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(run.stdout, "from layout\nkept\n", "{run:?}");
    assert_eq!(restored_template(&run), Some(first), "{run:?}");
    root.assert_clean(&run);
}

#[test]
fn a_corrupt_template_is_rebuilt_with_a_message_and_templates_can_be_managed() {
    let templates = tempdir();
    let root = Root::with_templates(templates.path());
    let run = root.bulkhead(&["run", "--timings", "busybox", "echo", "one"]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(run.stderr.contains("making template"), "{run:?}");
    let key = restored_template(&run).expect("not restored");

    let state = templates.path().join(&key).join("state");
    let mut bytes = std::fs::read(&state).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x20;
    std::fs::write(&state, bytes).unwrap();
    let run = root.bulkhead(&["run", "--timings", "busybox", "echo", "two"]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(run.stdout, "two\n", "{run:?}");
    assert!(
        run.stderr.contains(&format!("template {key} is unusable"))
            && run.stderr.contains("checksum")
            && run.stderr.contains("rebuilding"),
        "{run:?}"
    );
    assert_eq!(restored_template(&run), Some(key.clone()), "{run:?}");

    let ls = root.bulkhead(&["template", "ls"]);
    assert_eq!(ls.code, Some(0), "{ls:?}");
    assert!(ls.stdout.contains(&key), "{ls:?}");
    let rm = root.bulkhead(&["template", "rm", &key[..6]]);
    assert_eq!(rm.code, Some(0), "{rm:?}");
    assert!(!templates.path().join(&key).exists());
    let rm = root.bulkhead(&["template", "rm", "nosuchkey"]);
    assert_eq!(rm.code, Some(1), "{rm:?}");
    assert_eq!(rm.stderr.lines().count(), 1, "{rm:?}");
    root.assert_clean(&run);
}

#[test]
fn cold_runs_still_boot() {
    let root = Root::new();
    let run = root.bulkhead(&["run", "--cold", "--timings", "busybox", "echo", "cold"]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(run.stdout, "cold\n", "{run:?}");
    assert_eq!(restored_template(&run), None, "{run:?}");
    assert!(run.stderr.contains("cold start"), "{run:?}");
    root.assert_clean(&run);
}
