//! Container specs as JSON: bulkhead's own `ContainerSpec` (what the agent
//! receives) validated and sent through JSON again, and an OCI runtime
//! `config.json` converted with `ContainerSpec::from_oci`, as the CLI does
//! with an OCI bundle. The first byte picks which.

#![no_main]

use bulkhead_protocol::{ContainerSpec, Storage};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&which, json)) = data.split_first() else {
        return;
    };
    if which & 1 == 0 {
        if let Ok(spec) = serde_json::from_slice::<ContainerSpec>(json) {
            let _ = spec.validate();
            let again = serde_json::to_vec(&spec).unwrap();
            let back: ContainerSpec = serde_json::from_slice(&again).unwrap();
            assert_eq!(back, spec, "a spec changed through JSON");
        }
    } else if let Ok(oci) = serde_json::from_slice::<oci_spec::runtime::Spec>(json) {
        if let Ok(spec) = ContainerSpec::from_oci(&oci, Storage::default()) {
            let _ = spec.validate();
        }
    }
});
