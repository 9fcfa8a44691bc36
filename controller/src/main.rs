//! `maille-controller`: parses flags and runs the controller (or a one-off subcommand).

use clap::Parser;
use maille_controller::cli::{Cli, Command};
use maille_controller::{dns, kubernetes};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    cli.logging.init()?;
    match cli.command {
        None => maille_controller::run::run(cli.run).await?,
        Some(Command::Prepare(args)) => {
            let client = kubernetes::client(args.kubeconfig.as_deref()).await?;
            dns::prepare(client, &args.options()).await?;
        }
        Some(Command::Cleanup(args)) => {
            let client = kubernetes::client(args.kubeconfig.as_deref()).await?;
            dns::cleanup(client, &args.options()).await?;
        }
    }
    Ok(())
}
