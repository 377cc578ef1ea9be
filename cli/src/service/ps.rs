//! `ps [-a] [-q]`: the containers, as `docker ps` lists them; with an id,
//! runc's `ps ID` (the container's processes).

use clap::Args;

use crate::lifecycle::{Locked, Status};
use crate::oci::Global;

#[derive(Args, Debug)]
pub struct PsArgs {
    /// Also stopped containers.
    #[arg(short = 'a', long)]
    pub all: bool,
    /// Only the ids.
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// With an id (runc's form): table or json.
    #[arg(short = 'f', long, default_value = "table")]
    pub format: String,
    /// runc's form: the processes of this container.
    pub id: Option<String>,
    /// runc passes `ps` options here; they are accepted and ignored.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
    pub ps_args: Vec<String>,
}

pub fn ps(global: &Global, args: &PsArgs) -> anyhow::Result<()> {
    if let Some(id) = &args.id {
        return crate::oci::ps(global, id, &args.format);
    }
    let root = global.root();
    if !args.quiet {
        println!(
            "{:<20} {:<24} {:<30} {:<20} STATUS",
            "CONTAINER ID", "IMAGE", "COMMAND", "CREATED"
        );
    }
    for id in root.ids() {
        let Ok(c) = Locked::open(&root, &id) else {
            continue;
        };
        let Ok(r) = c.current() else { continue };
        if r.status == Status::Stopped && !args.all {
            continue;
        }
        if args.quiet {
            println!("{id}");
            continue;
        }
        let status = match (r.status, r.exit) {
            (Status::Stopped, Some(e)) => format!("Exited ({})", e.code()),
            (s, _) => s.as_str().to_string(),
        };
        let image = r
            .image
            .clone()
            .unwrap_or_else(|| r.bundle.display().to_string());
        let command = truncate(&r.command.join(" "), 28);
        let created = r.created.get(..19).unwrap_or(&r.created).replace('T', " ");
        println!(
            "{id:<20} {:<24} {:<30} {created:<20} {status}",
            truncate(&image, 22),
            format!("\"{command}\"")
        );
    }
    Ok(())
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(n - 1).collect::<String>())
    }
}
