//! Starting and stopping the real `intellihealth` binary for black-box tests: a temp data dir,
//! port 0, the chosen address read from the one line it prints, and stop by PID.

#![allow(dead_code)]

pub mod services;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub struct Server {
    child: Option<Child>,
    pub base_url: String,
    pub data_dir: PathBuf,
}

impl Server {
    /// Starts `intellihealth serve` on a free port with its data in `data_dir`.
    pub fn start(data_dir: &Path, extra_args: &[&str]) -> Server {
        let mut command = Command::new(env!("CARGO_BIN_EXE_intellihealth"));
        command
            .arg("serve")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(data_dir)
            .args(extra_args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        // The embedded profile: nothing from the environment may select services.
        for (name, _) in std::env::vars() {
            if name.starts_with("INTELLIHEALTH_") {
                command.env_remove(name);
            }
        }
        let mut child = command.spawn().expect("the intellihealth binary starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the server prints its address within 60 s");
        let base_url = line
            .trim()
            .rsplit(' ')
            .next()
            .expect("a listening line")
            .to_owned();
        assert!(
            base_url.starts_with("http://"),
            "unexpected first line: {line}"
        );
        Server {
            child: Some(child),
            base_url,
            data_dir: data_dir.to_owned(),
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map_or(0, |c| c.id() as i32)
    }

    /// Sends SIGTERM and waits (at most 30 s) for the process to exit.
    pub fn terminate(mut self) -> ExitStatus {
        let mut child = self.child.take().expect("a running server");
        // SAFETY: signalling our own child by its PID.
        unsafe {
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().expect("wait for the server") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the server did not stop within 30 s of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A reqwest-free HTTP client is not worth writing: tests use the conformance runner's.
pub fn client(server: &Server) -> conformance_tests::client::Client {
    conformance_tests::client::Client::new(&server.base_url, None)
}
