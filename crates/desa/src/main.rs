//! The `desa` binary: see `cli.rs` for the commands.

mod autoscale;
mod bench;
mod cli;
mod client;
mod demo;
mod fsck;
mod gen;
mod query;
mod serve;
mod token;
mod units;

/// mimalloc instead of glibc's malloc: ingest allocates each event's
/// strings on an HTTP thread and frees them on the commit thread, and
/// glibc spent about a tenth of a 100M-event load's CPU on that churn.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    cli::run()
}
