//! `bulkhead network create|ls|rm|inspect` and `bulkhead gc`: the user's
//! view of the networks containers join (see `bulkhead_network`).

use anyhow::Context;
use bulkhead_network::{Ipv4Cidr, Networks};
use clap::Subcommand;

use crate::paths;

#[derive(Subcommand)]
pub enum NetworkCommand {
    /// Make a network: its own bridge and subnet; containers on it reach
    /// each other by name.
    Create {
        name: String,
        /// The subnet (default: the next free 10.89.N.0/24).
        #[arg(long)]
        subnet: Option<Ipv4Cidr>,
    },
    /// List the networks.
    #[command(visible_alias = "list")]
    Ls,
    /// Remove networks no container is on.
    #[command(visible_alias = "remove")]
    Rm {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Print networks and their containers as JSON.
    Inspect {
        #[arg(required = true)]
        names: Vec<String>,
    },
}

pub fn run(cmd: NetworkCommand) -> anyhow::Result<()> {
    let networks = Networks::open(&paths::root())?;
    match cmd {
        NetworkCommand::Create { name, subnet } => {
            let def = networks.create(&name, subnet)?;
            println!("{}", def.name);
        }
        NetworkCommand::Ls => {
            networks.sweep()?;
            println!("{:<20} {:<16} {:<18} GATEWAY", "NAME", "BRIDGE", "SUBNET");
            for n in networks.list()? {
                println!(
                    "{:<20} {:<16} {:<18} {}",
                    n.name, n.bridge, n.subnet, n.gateway
                );
            }
        }
        NetworkCommand::Rm { names } => {
            networks.sweep()?;
            for name in names {
                networks.remove(&name)?;
                println!("{name}");
            }
        }
        NetworkCommand::Inspect { names } => {
            networks.sweep()?;
            let mut out = Vec::new();
            for name in names {
                let def = networks.get(&name)?;
                let endpoints = networks.endpoints(&name)?;
                out.push(serde_json::json!({ "network": def, "containers": endpoints }));
            }
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
    }
    Ok(())
}

/// `bulkhead gc`: gives back what containers whose bulkhead process died
/// (even by `kill -9`) still hold: address leases and published ports.
/// Every network command and every run does the same sweep first.
pub fn gc() -> anyhow::Result<()> {
    let networks = Networks::open(&paths::root())?;
    let swept = networks.sweep().context("cannot sweep the networks")?;
    for lease in &swept.removed {
        println!(
            "released {} on network {} (container {})",
            lease.address,
            lease.network,
            lease.container_id.as_deref().unwrap_or("unknown")
        );
    }
    Ok(())
}
