//! A real OCI distribution registry for tests: Debian's `docker-registry`
//! (CNCF distribution 2.8) on a free loopback port, its storage in a temp
//! dir, stopped and restarted on the same port and storage at will.
//!
//! Where the binary is missing the tests that need it skip with a printed
//! reason, unless `SEAL_REQUIRE_REGISTRY` is set (as `.ci/run` does), which
//! makes a skip a failure.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct TestRegistry {
    dir: tempfile::TempDir,
    bin: PathBuf,
    child: Option<Child>,
    addr: String,
}

impl TestRegistry {
    /// Starts a registry, or says why not and returns `None` (a panic when
    /// `SEAL_REQUIRE_REGISTRY` is set).
    pub fn start() -> Option<Self> {
        let bin = std::env::var_os("SEAL_TEST_REGISTRY_BIN")
            .map(PathBuf::from)
            .or_else(|| which("docker-registry"));
        let Some(bin) = bin else {
            let why = "docker-registry (Debian's package, CNCF distribution) is not installed";
            assert!(
                std::env::var_os("SEAL_REQUIRE_REGISTRY").is_none(),
                "SEAL_REQUIRE_REGISTRY is set but {why}"
            );
            eprintln!("skipped: {why}");
            return None;
        };
        let dir = tempfile::tempdir().expect("temp dir");
        let mut registry = Self {
            dir,
            bin,
            child: None,
            addr: "127.0.0.1:0".into(),
        };
        registry.spawn();
        Some(registry)
    }

    /// `host:port`.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// `oci://host:port/<repository>`.
    pub fn url(&self, repository: &str) -> String {
        format!("oci://{}/{repository}", self.addr)
    }

    /// Stops it (kill -9): requests are refused until [`Self::restart`].
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port over the same storage.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    fn spawn(&mut self) {
        let config = self.dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {}\n",
                self.dir.path().join("data").display(),
                self.addr
            ),
        )
        .expect("write registry config");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut child = Command::new(&self.bin)
                .arg("serve")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("start docker-registry");
            let stderr = child.stderr.take().expect("stderr");
            let mut lines = BufReader::new(stderr).lines();
            // `listening on 127.0.0.1:PORT` once the socket is bound.
            let bound = lines.by_ref().map_while(Result::ok).find_map(|l| {
                let at = l.find("listening on ")?;
                let rest = &l[at + "listening on ".len()..];
                Some(rest.split(['"', ' ']).next()?.to_owned())
            });
            // Keep draining its log so it never blocks on a full pipe.
            std::thread::spawn(move || lines.for_each(drop));
            match bound {
                Some(addr) => {
                    self.addr = addr;
                    self.child = Some(child);
                    return;
                }
                None => {
                    // The port of a restart may still be held for a moment.
                    let _ = child.kill();
                    let _ = child.wait();
                    assert!(
                        Instant::now() < deadline,
                        "docker-registry did not start on {}",
                        self.addr
                    );
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        self.stop();
    }
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| PathBuf::from(dir).join(name))
        .find(|p| p.is_file())
}
