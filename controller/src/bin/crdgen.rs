//! `crdgen`: the SMI CustomResourceDefinitions generated from the controller's types, printed
//! as one YAML stream, or written one file per definition into a folder (the chart's `crds/`).

use std::path::PathBuf;

use clap::Parser;

/// Prints (or writes) the SMI CustomResourceDefinitions Maille reads.
#[derive(Parser)]
#[command(name = "crdgen")]
struct Args {
    /// Write one `<plural>.<group>.yaml` per definition into this folder instead of printing.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let files = maille_controller::smi::crd::chart_files()?;
    match args.out {
        None => {
            for (_, text) in files {
                print!("---\n{text}");
            }
        }
        Some(dir) => {
            for (name, text) in files {
                let path = dir.join(name);
                std::fs::write(&path, text)
                    .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
            }
        }
    }
    Ok(())
}
