use clap::Parser;

/// mailsync (mailcluster)
#[derive(Parser)]
#[command(version, about)]
struct Cli {}

fn main() {
    let _cli = Cli::parse();
}
