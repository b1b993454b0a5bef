//! The `desa` binary: see `cli.rs` for the commands.

mod bench;
mod cli;
mod client;
mod demo;
mod gen;
mod query;
mod serve;
mod units;

fn main() -> anyhow::Result<()> {
    cli::run()
}
