//! `crdgen`: the SMI CustomResourceDefinitions generated from the controller's types, printed
//! as one YAML stream, or written one file per definition into a folder (the chart's `crds/`);
//! with `--gateway-out`, the Gateway API route definitions too (the chart's `gateway-crds/`,
//! installed only when the cluster has none).

use std::path::PathBuf;

use clap::Parser;

/// Prints (or writes) the SMI CustomResourceDefinitions Maille reads.
#[derive(Parser)]
#[command(name = "crdgen")]
struct Args {
    /// Write one `<plural>.<group>.yaml` per definition into this folder instead of printing.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Write the Gateway API HTTPRoute and GRPCRoute definitions into this folder.
    #[arg(long, value_name = "DIR")]
    gateway_out: Option<PathBuf>,
}

fn write_all(dir: &std::path::Path, files: Vec<(String, String)>) -> anyhow::Result<()> {
    for (name, text) in files {
        let path = dir.join(name);
        std::fs::write(&path, text)
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let files = maille_controller::smi::crd::chart_files()?;
    if let Some(dir) = &args.gateway_out {
        write_all(dir, maille_controller::gateway::crd::chart_files()?)?;
    }
    match args.out {
        None if args.gateway_out.is_none() => {
            for (_, text) in files {
                print!("---\n{text}");
            }
        }
        None => {}
        Some(dir) => write_all(&dir, files)?,
    }
    Ok(())
}
