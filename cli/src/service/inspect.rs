//! `inspect`: everything bulkhead knows of a container, as JSON: its
//! record (state, monitor pid, exit), and the plan its VM was made from.

use crate::lifecycle::state::PLAN;
use crate::lifecycle::{Locked, Plan};
use crate::oci::Global;

pub fn inspect(global: &Global, ids: &[String]) -> anyhow::Result<()> {
    let root = global.root();
    let mut all = Vec::new();
    for id in ids {
        let c = Locked::open(&root, id)?;
        let record = c.current()?;
        let plan = Plan::read(&c.dir().join(PLAN)).ok();
        all.push(serde_json::json!({
            "Id": record.id,
            "State": {
                "Status": record.status.as_str(),
                "Running": record.status == crate::lifecycle::Status::Running,
                "Pid": record.pid,
                "ExitCode": record.exit.map(|e| e.code()),
            },
            "Created": record.created,
            "Image": record.image,
            "Bundle": record.bundle,
            "Command": record.command,
            "LogPath": record.log,
            "Annotations": record.annotations,
            "Config": plan,
        }));
    }
    println!("{}", serde_json::to_string_pretty(&all)?);
    Ok(())
}
