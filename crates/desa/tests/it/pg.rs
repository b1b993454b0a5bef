//! `Postgres`: a throwaway PostgreSQL server (initdb into a temporary
//! directory, pg_ctl on a free loopback port), stopped and deleted on drop.

use std::path::PathBuf;
use std::process::{Command, Stdio};

/// Where the server binaries are: `DESA_PG_BIN`, else the newest
/// `/usr/lib/postgresql/*/bin` (Debian's layout; `scripts/test.sh` installs it).
fn bin_dir() -> PathBuf {
    if let Ok(p) = std::env::var("DESA_PG_BIN") {
        return PathBuf::from(p);
    }
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.path().join("bin"))
                .collect()
        })
        .unwrap_or_default();
    dirs.retain(|d| d.join("initdb").exists());
    dirs.sort_by_key(|d| {
        d.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    dirs.pop().unwrap_or_else(|| {
        panic!("PostgreSQL server binaries not found; run scripts/test.sh (installs postgresql) or set DESA_PG_BIN")
    })
}

pub struct Postgres {
    dir: tempfile::TempDir,
    pub port: u16,
    bin: PathBuf,
}

impl Postgres {
    /// initdb refuses to run as root: as root, the server runs as `postgres`.
    fn command(&self, tool: &str) -> Command {
        let exe = self.bin.join(tool);
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(exe);
            c
        } else {
            Command::new(exe)
        }
    }

    pub fn start() -> Postgres {
        let dir = tempfile::Builder::new()
            .prefix("desa-pg-")
            .tempdir_in("/tmp")
            .unwrap();
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            let ok = Command::new("chown")
                .args(["postgres:", dir.path().to_str().unwrap()])
                .status()
                .unwrap()
                .success();
            assert!(ok, "chown of the PostgreSQL test directory");
        }
        let pg = Postgres {
            port: crate::kafka::free_port(),
            bin: bin_dir(),
            dir,
        };
        let out = pg
            .command("initdb")
            .args(["-A", "trust", "-U", "desa", "--no-sync", "-D"])
            .arg(pg.data())
            .stdout(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        pg.start_server();
        pg
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Starts the server on its port and waits until it accepts connections.
    pub fn start_server(&self) {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1",
            self.port,
            self.dir.path().display()
        );
        let out = self
            .command("pg_ctl")
            .args(["start", "-w", "-t", "60", "-D"])
            .arg(self.data())
            .args(["-o", &opts, "-l"])
            .arg(self.dir.path().join("server.log"))
            .stdout(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pg_ctl start failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
        );
    }

    /// `pg_ctl stop -m immediate`: no checkpoint, crash recovery on start.
    pub fn stop_immediate(&self) {
        let _ = self
            .command("pg_ctl")
            .args(["stop", "-m", "immediate", "-w", "-D"])
            .arg(self.data())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }

    pub fn url(&self) -> String {
        format!("postgres://desa@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop_immediate();
    }
}
