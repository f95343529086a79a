//! `kubectl ospatch`: thin main; the commands live in `updater::plugin`.

use clap::Parser;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let cli = updater::plugin::Cli::parse();
    let mut out = std::io::stdout();
    if let Err(e) = updater::plugin::run(cli, &mut out).await {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
