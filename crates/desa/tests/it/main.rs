//! Integration tests: each starts the real `desa` binary on a free loopback
//! port and talks HTTP to it, killing it with SIGKILL where the test says so.

mod auth;
mod autoscale;
mod bad_input;
mod bench;
mod browser;
mod cache;
mod cluster;
mod cluster_retention;
mod console;
mod crash;
mod deploy;
mod docs;
mod faults;
mod hardening;
mod kafka;
mod oracle;
mod outage;
mod pg;
mod policies;
mod rebalance;
mod scale_out;
mod support;
mod tls;
