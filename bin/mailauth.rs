use clap::Parser;

/// mailauth (mailcluster)
#[derive(Parser)]
#[command(version, about)]
struct Cli {}

fn main() {
    let _cli = Cli::parse();
}
