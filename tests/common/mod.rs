//! Starting and stopping the real `intellihealth` binary for black-box tests: a temp data dir,
//! port 0, the chosen address read from the one line it prints, stop by PID. A profile gives
//! the environment: none for the embedded profile, the services' addresses for the services one.

#![allow(dead_code)]

pub mod actors;
pub mod services;
pub mod wallet;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

/// Which implementations the server under test uses.
#[derive(Clone, Debug)]
pub enum Profile {
    Embedded,
    /// MongoDB (a fresh database of its own), IPFS and anvil (the ledger), as
    /// `scripts/services` started them.
    Services {
        mongodb_uri: String,
        ipfs_api: String,
    },
}

impl Profile {
    /// The services profile on a database no other test uses.
    pub fn services(tag: &str) -> Profile {
        Profile::Services {
            mongodb_uri: services::fresh_database_uri(tag),
            ipfs_api: services::ipfs_api(),
        }
    }

    /// The services profile on a database of its own and an IPFS node of its own.
    pub fn services_with(tag: &str, ipfs: &services::OwnIpfs) -> Profile {
        Profile::Services {
            mongodb_uri: services::fresh_database_uri(tag),
            ipfs_api: ipfs.api.clone(),
        }
    }

    pub fn env(&self) -> Vec<(String, String)> {
        match self {
            Profile::Embedded => Vec::new(),
            Profile::Services {
                mongodb_uri,
                ipfs_api,
            } => vec![
                ("INTELLIHEALTH_MONGODB_URI".into(), mongodb_uri.clone()),
                ("INTELLIHEALTH_IPFS_API".into(), ipfs_api.clone()),
                // The ledger too: the services profile's consent lives on anvil.
                ("INTELLIHEALTH_ETH_RPC".into(), services::eth_rpc()),
                (
                    "INTELLIHEALTH_ETH_KEY_FILE".into(),
                    services::eth_key_file(),
                ),
            ],
        }
    }
}

pub struct Server {
    child: Option<Child>,
    pub base_url: String,
    pub data_dir: PathBuf,
    /// A backend client with `system/*.cruds`, registered before the server started.
    credentials: Option<Credentials>,
}

/// A confidential client of the server under test.
#[derive(Clone, Debug)]
pub struct Credentials {
    pub client_id: String,
    pub secret: String,
}

/// Registers a backend client with every system scope, a custodian (the EHR of record, which
/// reads every patient without a grant), through the CLI (on the embedded profile this must
/// happen while no server holds the data directory).
pub fn provision(data_dir: &Path, profile: &Profile) -> Credentials {
    let credentials = Credentials {
        client_id: "test-system".into(),
        secret: format!("secret-{:016x}", rand::random::<u64>()),
    };
    let secret_file = data_dir.join("test-system.secret");
    std::fs::create_dir_all(data_dir).unwrap();
    std::fs::write(&secret_file, &credentials.secret).unwrap();
    succeeded(
        command(&profile.env())
            .args([
                "clients",
                "add",
                "--id",
                &credentials.client_id,
                "--scope",
                "system/*.cruds",
                "--custodian",
                "--secret-file",
            ])
            .arg(&secret_file)
            .arg("--data-dir")
            .arg(data_dir),
    );
    credentials
}

/// Runs `command` to its end and asserts that it succeeded; its output, for what it printed.
/// The panic names the program and its arguments, never its environment (which may carry a
/// secret), and quotes its stderr.
pub fn succeeded(command: &mut Command) -> Output {
    let shown = format!(
        "{} {:?}",
        command.get_program().to_string_lossy(),
        command.get_args().collect::<Vec<_>>()
    );
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("{shown} does not run: {e}"));
    assert!(
        output.status.success(),
        "{shown}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// An access token (client_credentials, `system/*.cruds`) of the backend client
/// `credentials` from the server at `root` (its origin, without `/fhir`).
pub async fn backend_token(root: &str, credentials: &Credentials) -> String {
    let reply = reqwest::Client::new()
        .post(format!("{root}/auth/token"))
        .basic_auth(&credentials.client_id, Some(&credentials.secret))
        .form(&[
            ("grant_type", "client_credentials"),
            ("scope", "system/*.cruds"),
        ])
        .send()
        .await
        .expect("the token endpoint answers");
    let body: serde_json::Value = reply.json().await.expect("a token response");
    body["access_token"]
        .as_str()
        .unwrap_or_else(|| panic!("no access token: {body}"))
        .to_owned()
}

/// A server process that may not be listening yet.
pub struct Spawned {
    /// Always `Some` until `ready` hands the process to a `Server`.
    child: Option<Child>,
    credentials: Option<Credentials>,
    first_line: Receiver<String>,
    data_dir: PathBuf,
}

/// The binary with a clean environment: only `env` may select services.
pub fn command(env: &[(String, String)]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_intellihealth"));
    for (name, _) in std::env::vars() {
        if name.starts_with("INTELLIHEALTH_") {
            command.env_remove(name);
        }
    }
    command.envs(env.iter().map(|(k, v)| (k, v)));
    command
}

/// A free local port (found by binding port 0), as `--listen` and `--base-url` values: for
/// servers whose base URL must be fixed before they start.
pub fn fixed_address() -> (String, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    (
        format!("127.0.0.1:{port}"),
        format!("http://127.0.0.1:{port}/fhir"),
    )
}

impl Spawned {
    /// Starts `intellihealth serve` on a free port with its data in `data_dir`; its log goes
    /// to `stderr` (a file) or is inherited.
    pub fn new(
        data_dir: &Path,
        extra_args: &[&str],
        profile: &Profile,
        stderr: Option<&Path>,
    ) -> Spawned {
        let credentials = provision(data_dir, profile);
        Spawned::without_client(data_dir, extra_args, profile, stderr).with_credentials(credentials)
    }

    /// Starts the server without registering a client first (for a server that cannot open
    /// its stores yet).
    pub fn without_client(
        data_dir: &Path,
        extra_args: &[&str],
        profile: &Profile,
        stderr: Option<&Path>,
    ) -> Spawned {
        Spawned::with_env(data_dir, extra_args, profile, stderr, &[])
    }

    /// Like `without_client`, with more environment (trusted issuers, the admin token).
    pub fn with_env(
        data_dir: &Path,
        extra_args: &[&str],
        profile: &Profile,
        stderr: Option<&Path>,
        env: &[(String, String)],
    ) -> Spawned {
        let mut all = profile.env();
        all.extend_from_slice(env);
        let mut command = command(&all);
        command.arg("serve");
        if !extra_args.contains(&"--listen") {
            command.args(["--listen", "127.0.0.1:0"]);
        }
        command
            .arg("--data-dir")
            .arg(data_dir)
            .args(extra_args)
            .stdout(Stdio::piped());
        match stderr {
            Some(path) => command.stderr(std::fs::File::create(path).expect("a log file")),
            None => command.stderr(Stdio::inherit()),
        };
        let mut child = command.spawn().expect("the intellihealth binary starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, first_line) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        Spawned {
            child: Some(child),
            credentials: None,
            first_line,
            data_dir: data_dir.to_owned(),
        }
    }

    /// Whether the server has announced its address within `wait`.
    pub fn ready(mut self, wait: Duration) -> Result<Server, Spawned> {
        match self.first_line.recv_timeout(wait) {
            Ok(line) => {
                let base_url = line
                    .trim()
                    .rsplit(' ')
                    .next()
                    .unwrap_or_default()
                    .to_owned();
                assert!(
                    base_url.starts_with("http://"),
                    "unexpected first line: {line}"
                );
                Ok(Server {
                    child: self.child.take(),
                    base_url,
                    data_dir: self.data_dir.clone(),
                    credentials: self.credentials.clone(),
                })
            }
            Err(_) => Err(self),
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map_or(0, |c| c.id() as i32)
    }

    /// Restarts a server on `data_dir` whose client was provisioned before.
    pub fn new_with(data_dir: &Path, args: &[&str], credentials: Credentials) -> Server {
        Spawned::without_client(data_dir, args, &Profile::Embedded, None)
            .with_credentials(credentials)
            .ready(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("the server restarts"))
    }

    pub fn with_credentials(mut self, credentials: Credentials) -> Spawned {
        self.credentials = Some(credentials);
        self
    }
}

impl Server {
    /// An access token of the provisioned backend client (client_credentials).
    pub async fn token(&self) -> String {
        backend_token(self.base_url.trim_end_matches("/fhir"), self.credentials()).await
    }

    pub fn credentials(&self) -> &Credentials {
        self.credentials.as_ref().expect("a provisioned client")
    }

    /// Starts the server on the embedded profile and waits until it listens.
    pub fn start(data_dir: &Path, extra_args: &[&str]) -> Server {
        Server::start_with(data_dir, extra_args, &Profile::Embedded)
    }

    pub fn start_with(data_dir: &Path, extra_args: &[&str], profile: &Profile) -> Server {
        Spawned::new(data_dir, extra_args, profile, None)
            .ready(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("the server did not print its address within 60 s"))
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map_or(0, |c| c.id() as i32)
    }

    /// Sends SIGTERM and waits (at most 30 s) for the process to exit.
    pub fn terminate(mut self) -> ExitStatus {
        let mut child = self.child.take().expect("a running server");
        signal(child.id() as i32, libc::SIGTERM);
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

    /// SIGKILL: no chance to flush or finish anything.
    pub fn kill(mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
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

impl Drop for Spawned {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Sends `signal` to a process this test started, by its PID.
pub fn signal(pid: i32, signal: i32) {
    // SAFETY: kill(2) with a PID we own; no memory is shared.
    unsafe {
        libc::kill(pid, signal);
    }
}

/// A client of the server under test, authenticated as the provisioned backend client.
pub async fn client(server: &Server) -> conformance_tests::client::Client {
    conformance_tests::client::Client::new(&server.base_url, Some(server.token().await))
}

/// Large enough for the two biggest official example Bundles (about 12 MB and 19 MB).
pub const CONFORMANCE_BODY_LIMIT: usize = 64 * 1024 * 1024;

/// Runs the black-box conformance runner, with every resource of the official examples,
/// against the real binary on `profile`; fails listing every failed case.
pub async fn conformance_suite_passes(profile: Profile) {
    let examples = conformance_tests::default_examples_dir();
    assert!(
        examples.join("Patient-example.json").is_file(),
        "the official examples are missing at {}: run scripts/test, which fetches npm \
         hl7.fhir.r4.examples@4.0.1, or set FHIR_EXAMPLES_DIR",
        examples.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let credentials = provision(dir.path(), &profile);
    let issuer = std::sync::Arc::new(conformance_tests::keys::TestIssuer::start().await);
    let admin_token = format!("admin-{:016x}", rand::random::<u64>());
    let fixtures = smart_fixtures(dir.path(), &profile, issuer.clone(), &admin_token);
    let env = [
        (
            "INTELLIHEALTH_TRUSTED_ISSUERS".to_owned(),
            issuer.url.clone(),
        ),
        ("INTELLIHEALTH_ADMIN_TOKEN".to_owned(), admin_token),
    ];
    let limit = CONFORMANCE_BODY_LIMIT.to_string();
    // Trusting an issuer requires a fixed base URL (the audience of its tokens).
    let (listen, base_url) = fixed_address();
    // On the services profile the audit trail is off here: every audited request costs a round
    // (an IPFS add and a MongoDB transaction) on top of its own, and on SecantusDB that took
    // this run from 11 minutes to more than 30; tests/audit.rs runs the trail on that profile.
    let audit = match profile {
        Profile::Embedded => "on",
        Profile::Services { .. } => "off",
    };
    let args = [
        "--max-body-bytes",
        &limit,
        "--listen",
        &listen,
        "--base-url",
        &base_url,
        "--audit",
        audit,
    ];
    let server = Spawned::with_env(dir.path(), &args, &profile, None, &env)
        .with_credentials(credentials)
        .ready(Duration::from_secs(60))
        .unwrap_or_else(|_| panic!("the server did not print its address within 60 s"));
    let report = conformance_tests::run(&conformance_tests::Options {
        base_url: server.base_url.clone(),
        bearer: Some(server.token().await),
        examples_dir: Some(examples),
        all_examples: true,
        max_body_bytes: CONFORMANCE_BODY_LIMIT,
        smart: Some(fixtures),
    })
    .await;
    println!("{}", report.table());
    let failures: Vec<String> = report
        .failures()
        .iter()
        .map(|f| format!("{} / {}: {}", f.suite, f.name, f.detail))
        .collect();
    assert!(
        report.all_passed(),
        "failed cases:\n{}",
        failures.join("\n")
    );
    assert!(
        server.terminate().success(),
        "the server exits cleanly on SIGTERM"
    );
}

/// Registers, through the CLI, the users and clients the SMART and attack suites use.
pub fn smart_fixtures(
    data_dir: &Path,
    profile: &Profile,
    issuer: std::sync::Arc<conformance_tests::keys::TestIssuer>,
    admin_token: &str,
) -> conformance_tests::suites::smart::SmartFixtures {
    use conformance_tests::keys::AsymmetricClient;
    use conformance_tests::suites::smart::{SmartFixtures, UserLogin};
    let cli = |args: &[&str]| {
        succeeded(
            command(&profile.env())
                .args(args)
                .arg("--data-dir")
                .arg(data_dir),
        );
    };
    let secret_file = |name: &str, secret: &str| {
        let path = data_dir.join(format!("{name}.secret"));
        std::fs::write(&path, secret).unwrap();
        path.to_string_lossy().into_owned()
    };
    let patient_user = UserLogin {
        username: "pat".into(),
        password: "pat-password-1".into(),
        patient_id: "smart-patient".into(),
    };
    let practitioner = UserLogin {
        username: "doc".into(),
        password: "doc-password-1".into(),
        patient_id: "smart-chosen".into(),
    };
    let patient_password = secret_file("pat", &patient_user.password);
    cli(&[
        "users",
        "add",
        "--username",
        "pat",
        "--password-file",
        &patient_password,
        "--fhir-user",
        "Patient/smart-patient",
    ]);
    let doctor_password = secret_file("doc", &practitioner.password);
    cli(&[
        "users",
        "add",
        "--username",
        "doc",
        "--password-file",
        &doctor_password,
        "--fhir-user",
        "Practitioner/smart-doctor",
    ]);
    let redirect_uri = "https://app.example/callback";
    cli(&[
        "clients",
        "add",
        "--id",
        "smart-app",
        "--public",
        "--name",
        "Runner's app",
        "--redirect-uri",
        redirect_uri,
        "--scope",
        "launch launch/patient openid fhirUser offline_access online_access patient/*.rs patient/*.cruds user/*.rs",
    ]);
    // `+` and `/` make form-encoded and raw Basic credentials differ (both must work).
    let secret = format!("s+{:016x}/x", rand::random::<u64>());
    let secret_path = secret_file("backend", &secret);
    cli(&[
        "clients",
        "add",
        "--id",
        "smart-backend",
        "--secret-file",
        &secret_path,
        "--scope",
        "system/*.rs system/Patient.rs",
        "--custodian",
    ]);
    let es384 = AsymmetricClient::es384("smart-es384");
    let rs384 = AsymmetricClient::rs384("smart-rs384");
    for key in [&es384, &rs384] {
        let jwks = data_dir.join(format!("{}.jwks", key.client_id));
        std::fs::write(&jwks, key.jwks.to_string()).unwrap();
        cli(&[
            "clients",
            "add",
            "--id",
            &key.client_id,
            "--jwks-file",
            &jwks.to_string_lossy(),
            "--scope",
            "system/*.rs",
            "--custodian",
        ]);
    }
    SmartFixtures {
        app_client_id: "smart-app".into(),
        app_redirect_uri: redirect_uri.into(),
        secret_client_id: "smart-backend".into(),
        secret,
        es384,
        rs384,
        patient_user,
        practitioner,
        other_patient_id: "smart-other".into(),
        admin_token: Some(admin_token.to_owned()),
        issuer: Some(issuer),
    }
}

/// Runs the tests' Python (`INTELLIHEALTH_PYTHON`: scripts/python-clients, with eth-account)
/// with `args`, `input` on its stdin.
pub fn python(args: &[&str], input: &str) -> std::process::Output {
    use std::io::Write;
    let python = std::env::var("INTELLIHEALTH_PYTHON")
        .expect("INTELLIHEALTH_PYTHON: run scripts/test, which installs eth-account");
    let mut child = Command::new(python)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}
