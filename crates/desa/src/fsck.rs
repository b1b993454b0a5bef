//! `desa fsck`: checks a data dir file by file without changing it, or
//! rebuilds a lost MANIFEST from the files.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;

#[derive(Args, Clone, Debug)]
pub struct FsckArgs {
    /// The data dir to check (no node may be running on it).
    #[arg(long, env = "DESA_DATA_DIR", default_value = "./desa-data")]
    pub data_dir: PathBuf,
    /// Write a MANIFEST for a dir that lost its own, from the segment files
    /// (each describes itself) and the log; summaries are set aside in
    /// `orphans/` and built again by the node.
    #[arg(long)]
    pub rebuild_manifest: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: FsckArgs) -> Result<()> {
    let dir = &args.data_dir;
    if args.rebuild_manifest {
        let done = desa_engine::fsck::rebuild_manifest(dir)?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&done)?);
        } else if done.from_copy {
            println!(
                "MANIFEST restored in {} from its copy (segments/{}): {} segments ({} events), log from file {}, summaries and Kafka positions as they were",
                dir.display(),
                desa_engine::fsck::MANIFEST_COPY,
                done.segments,
                done.segment_events,
                done.wal_start,
            );
        } else {
            println!(
                "MANIFEST rebuilt in {} from the files (its copy is missing or names files that are not all there): {} segments ({} events), log from file {}; {} summaries set aside in orphans/ (the node builds them again)",
                dir.display(),
                done.segments,
                done.segment_events,
                done.wal_start,
                done.summaries_set_aside.len()
            );
            println!("Kafka positions of the lost manifest are not recovered: a consumer resumes from its group's committed offsets.");
        }
        if !args.json {
            println!(
                "Check the result with `desa fsck --data-dir {}`.",
                dir.display()
            );
        }
        return Ok(());
    }
    let r = desa_engine::fsck::check(dir)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!("data dir    {}", dir.display());
        println!(
            "manifest    {}",
            if r.manifest { "present" } else { "MISSING" }
        );
        println!("segments    {} ({} events)", r.segments, r.segment_events);
        println!("summaries   {}", r.summaries);
        println!(
            "log         {} files, {} records, {} events",
            r.log_files, r.log_records, r.log_events
        );
        println!("stored      {} events", r.stored_events);
        let total: u64 = r.bytes_by_part.values().sum();
        if total > 0 {
            let per = |n: u64| n as f64 / r.stored_events.max(1) as f64;
            let parts: Vec<String> = r
                .bytes_by_part
                .iter()
                .filter(|(_, &n)| n > 0)
                .map(|(part, &n)| format!("{part} {:.1}", per(n)))
                .collect();
            println!("bytes/event {:.1} in all: {}", per(total), parts.join(", "));
        }
        for n in &r.unnamed {
            println!("unnamed     segments/{n} (moved to orphans/ when a node opens the dir)");
        }
        for n in &r.orphans {
            println!("orphan      orphans/{n}");
        }
        for p in &r.problems {
            println!("PROBLEM     {p}");
        }
    }
    if !r.problems.is_empty() {
        bail!("{} problem(s) found in {}", r.problems.len(), dir.display());
    }
    Ok(())
}
