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
    /// The server accepts TLS connections only, with these files in its
    /// data directory.
    tls: bool,
}

/// The one name in the certificate of [`Postgres::start_tls`]'s server.
pub const SERVER_NAME: &str = "db.desa.test";

/// The certificates of a server that accepts TLS connections only.
pub struct Certs {
    /// PEM of the CA that signed the server's certificate.
    pub ca_file: PathBuf,
    /// PEM of a CA that did not.
    pub other_ca_file: PathBuf,
}

/// As root, the server runs as `postgres`: its directory and files are
/// handed to that user.
fn give_to_server(path: &std::path::Path) {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        let ok = Command::new("chown")
            .arg("postgres:")
            .arg(path)
            .status()
            .unwrap()
            .success();
        assert!(ok, "chown of {}", path.display());
    }
}

/// A CA, and a certificate it signs for the DNS `names`.
pub(crate) fn ca_and_server_cert(names: &[&str]) -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "desa test CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut server =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    server
        .distinguished_name
        .push(DnType::CommonName, "desa test server");
    let cert = server.signed_by(&key, &ca_cert, &ca_key).unwrap();
    (ca_cert.pem(), cert.pem(), key.serialize_pem())
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
        Self::init(false)
    }

    /// A server that accepts TLS connections only (`hostssl` in
    /// `pg_hba.conf`), its certificate naming [`SERVER_NAME`] only: reach it
    /// as `host=SERVER_NAME hostaddr=127.0.0.1` to verify the name.
    pub fn start_tls() -> (Postgres, Certs) {
        let pg = Self::init(true);
        let certs = Certs {
            ca_file: pg.dir.path().join("ca.pem"),
            other_ca_file: pg.dir.path().join("other-ca.pem"),
        };
        (pg, certs)
    }

    fn init(tls: bool) -> Postgres {
        let dir = tempfile::Builder::new()
            .prefix("desa-pg-")
            .tempdir_in("/tmp")
            .unwrap();
        give_to_server(dir.path());
        let pg = Postgres {
            port: crate::kafka::free_port(),
            bin: bin_dir(),
            dir,
            tls,
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
        if tls {
            pg.write_certs();
        }
        pg.start_server();
        pg
    }

    /// The server's certificate and key in its data directory, the CA files
    /// beside it, and a `pg_hba.conf` that takes TLS connections only.
    fn write_certs(&self) {
        let (ca, cert, key) = ca_and_server_cert(&[SERVER_NAME]);
        let (other_ca, _, _) = ca_and_server_cert(&[SERVER_NAME]);
        std::fs::write(self.dir.path().join("ca.pem"), ca).unwrap();
        std::fs::write(self.dir.path().join("other-ca.pem"), other_ca).unwrap();
        let data = self.data();
        std::fs::write(data.join("server.crt"), cert).unwrap();
        std::fs::write(data.join("server.key"), key).unwrap();
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all all trust\nhostssl all all 127.0.0.1/32 trust\n",
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        let key_file = data.join("server.key");
        std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
        for f in ["server.crt", "server.key", "pg_hba.conf"] {
            give_to_server(&data.join(f));
        }
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Starts the server on its port and waits until it accepts connections.
    pub fn start_server(&self) {
        let mut opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1",
            self.port,
            self.dir.path().display()
        );
        if self.tls {
            opts.push_str(" -c ssl=on -c ssl_cert_file=server.crt -c ssl_key_file=server.key");
        }
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

    /// Sends `signal` (`"STOP"`, `"CONT"`) to every server process: a
    /// stopped server keeps its sockets open, and its kernel accepts what
    /// clients send, but it answers nothing (a frozen VM, a stuck host).
    pub fn signal_all(&self, signal: &str) {
        let pid = std::fs::read_to_string(self.data().join("postmaster.pid")).unwrap();
        let pid = pid.lines().next().unwrap().trim().to_owned();
        // Children first, so that none is forked after the parent stops.
        let _ = Command::new("pkill")
            .args([&format!("-{signal}"), "-P", &pid])
            .status();
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal} {pid}");
    }

    /// The directory of the server's Unix socket (`-k`).
    pub fn socket_dir(&self) -> String {
        self.dir.path().display().to_string()
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

/// A worker's store opened in this process over `pg`, its blocks in
/// `dir/name`.
pub fn open_store(pg: &Postgres, dir: &std::path::Path, name: &str) -> desa_postgres::PgStore {
    open_store_keeping(pg, dir, name, None)
}

/// [`open_store`] with `--retention`.
pub fn open_store_keeping(
    pg: &Postgres,
    dir: &std::path::Path,
    name: &str,
    retention_secs: Option<i64>,
) -> desa_postgres::PgStore {
    desa_postgres::PgStore::open(desa_postgres::PgConfig {
        retention_secs,
        ..store_config(pg, dir, name)
    })
    .unwrap()
}

/// The configuration of [`open_store`]: a worker that keeps every shard
/// and advertises no URL.
pub fn store_config(pg: &Postgres, dir: &std::path::Path, name: &str) -> desa_postgres::PgConfig {
    desa_postgres::PgConfig {
        url: pg.url(),
        worker: name.into(),
        blocks_dir: dir.join(name),
        retention_secs: None,
        shards: desa_postgres::schema::DEFAULT_SHARDS,
        advertise_url: None,
        peer_token: None,
        peer_cacert: None,
        password_file: None,
    }
}
