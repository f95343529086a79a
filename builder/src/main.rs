use builder::cli::{Cli, Command};
use clap::Parser;

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Build(a) => builder::build::run(a),
        Command::Verify(a) => builder::verify::run(a),
        Command::Boot(a) => builder::boot::run(a),
        Command::Render(a) => builder::render::run(a),
        Command::Seed(a) => builder::seed::run(a),
        Command::AgentImage(a) => builder::oci::run(a),
        Command::Relay(a) => builder::boot::relay(a.port),
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("builder: {e:#}");
            std::process::exit(1);
        }
    }
}
