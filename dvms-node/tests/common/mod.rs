//! Real `dvms-node` processes for tests: each with its own identity, ports, log file and
//! state directory; killed when dropped.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_dvms-node");

/// The daemon binary the tests start: `DVMS_NODE_BIN` if set (e.g. the release build, to
/// measure what users run; a relative path is taken from the workspace's root), else the
/// one built with the tests.
pub fn bin() -> String {
    match std::env::var("DVMS_NODE_BIN") {
        Ok(b) => Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(b)
            .to_string_lossy()
            .into_owned(),
        Err(_) => BIN.to_owned(),
    }
}

/// A directory for one test's keys and logs, removed when dropped.
pub struct Dir(pub PathBuf);

impl Dir {
    pub fn new(name: &str) -> Dir {
        let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("node-{name}"));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Dir(d)
    }

    /// A new pre-shared key file.
    pub fn psk(&self, name: &str) -> PathBuf {
        let p = self.0.join(name);
        let out = Command::new(BIN).arg("psk").arg(&p).output().unwrap();
        assert!(out.status.success(), "{out:?}");
        p
    }

    pub fn peer_id(&self, name: &str) -> String {
        let out = Command::new(BIN)
            .args(["peer-id", "--identity-file"])
            .arg(self.0.join(format!("{name}.id")))
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        if !std::thread::panicking() && std::env::var_os("KEEP_TEST_DIRS").is_none() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

pub struct Node {
    pub name: String,
    pub p2p_port: u16,
    pub http_port: u16,
    pub log: PathBuf,
    pub child: Option<Child>,
    args: Vec<String>,
    rust_log: String,
}

impl Node {
    /// Starts a daemon on loopback; `extra` are more `run` flags. The daemon picks its own
    /// ports (port 0), read back from its log: no race with other tests for free ports.
    pub fn start(dir: &Dir, name: &str, psk: &Path, bootstrap: &[u16], extra: &[&str]) -> Node {
        Self::start_logging(dir, name, psk, bootstrap, extra, "info")
    }

    /// [`Node::start`] with `RUST_LOG` set to `rust_log`.
    pub fn start_logging(
        dir: &Dir,
        name: &str,
        psk: &Path,
        bootstrap: &[u16],
        extra: &[&str],
        rust_log: &str,
    ) -> Node {
        let mut args: Vec<String> = vec![
            "run".into(),
            "--listen".into(),
            "/ip4/127.0.0.1/tcp/0".into(),
            "--http".into(),
            "127.0.0.1:0".into(),
            "--psk-file".into(),
            psk.display().to_string(),
            "--identity-file".into(),
            dir.0.join(format!("{name}.id")).display().to_string(),
        ];
        for b in bootstrap {
            args.push("--bootstrap".into());
            args.push(format!("/ip4/127.0.0.1/tcp/{b}"));
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut n = Node {
            name: name.into(),
            p2p_port: 0,
            http_port: 0,
            log: dir.0.join(format!("{name}.log")),
            child: None,
            args,
            rust_log: rust_log.into(),
        };
        n.spawn();
        n
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let start = log.metadata().unwrap().len() as usize;
        let child = Command::new(bin())
            .args(&self.args)
            .env("RUST_LOG", &self.rust_log)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("dvms-node starts");
        self.child = Some(child);
        self.read_ports(start);
    }

    /// The ports this run of the daemon logged (text or JSON logs).
    fn read_ports(&mut self, from: usize) {
        let t = Instant::now();
        loop {
            let text = self.logs();
            let run = text.get(from..).unwrap_or("");
            let after = |key: &str| -> Option<u16> {
                let i = run.find(key)? + key.len();
                let digits: String = run[i..].chars().take_while(char::is_ascii_digit).collect();
                digits.parse().ok()
            };
            let http = after("http=127.0.0.1:").or_else(|| after("\"http\":\"127.0.0.1:"));
            let p2p = after("listening on /ip4/127.0.0.1/tcp/");
            if let (Some(h), Some(p)) = (http, p2p) {
                self.http_port = h;
                self.p2p_port = p;
                return;
            }
            assert!(
                t.elapsed() < Duration::from_secs(10) && self.is_running(),
                "{} did not start:\n{}",
                self.name,
                run
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Same identity, ports and flags, new process.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill(); // SIGKILL
            let _ = c.wait();
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().unwrap().is_none())
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn get(&self, path: &str) -> String {
        http_get(self.http_port, path)
            .unwrap_or_else(|e| panic!("GET {path} on {}: {e}\n{}", self.name, self.logs()))
    }

    pub fn status(&self) -> serde_json::Value {
        serde_json::from_str(&self.get("/status")).unwrap()
    }

    pub fn id(&self) -> String {
        self.status()["id"].as_str().unwrap().to_owned()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Ids of the members this node lists (alive or suspected).
    pub fn member_ids(&self) -> Vec<String> {
        self.status()["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap().to_owned())
            .collect()
    }

    pub fn multiaddr(&self) -> String {
        format!("/ip4/127.0.0.1/tcp/{}", self.p2p_port)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

#[allow(unused_imports)] // not every test binary polls
pub use dvms_tests::wait_for;

pub fn http_get(port: u16, path: &str) -> std::io::Result<String> {
    dvms_tests::http_get(&format!("127.0.0.1:{port}"), path)
}
