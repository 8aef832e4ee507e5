use clap::Parser;

/// mailmap (mailcluster)
#[derive(Parser)]
#[command(version, about)]
struct Cli {}

fn main() {
    let _cli = Cli::parse();
}
