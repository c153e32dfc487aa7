//! Real servers for tests and the dev stack: `nats-server` and SeaweedFS (`weed mini`), from the
//! project venv, on free loopback ports with their own temp dirs, killed on `Drop`.
//!
//! NATS runs with the repository's configuration (`nats/nats-server.conf`, which includes the
//! users and permissions of `nats/auth.conf`), with passwords generated per server: services
//! connect as their own user ([`NatsServer::env_for`]), test code as `ops`
//! ([`NatsServer::client`]).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context, bail};
use common::config::{Env, S3Settings};
use common::storage::Storage;

/// Test credentials of the local S3.
pub const S3_ACCESS_KEY: &str = "test-access-key";
/// Test secret of the local S3 (never a real secret).
pub const S3_SECRET_KEY: &str = "test-secret-key-0123456789";
/// The bucket every test uses.
pub const S3_BUCKET: &str = "downloads";

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the workspace")
        .to_path_buf()
}

/// A binary installed by `deploy/local/install` into the project venv.
pub fn venv_binary(name: &str) -> anyhow::Result<PathBuf> {
    let path = workspace_root().join(".venv").join("bin").join(name);
    if !path.exists() {
        bail!("{} is missing: run deploy/local/install first", path.display());
    }
    Ok(path)
}

/// Ports handed out by [`free_port`] in this process, never handed out twice.
static HANDED_OUT: Mutex<Vec<u16>> = Mutex::new(Vec::new());

/// A free loopback TCP port, below the kernel's ephemeral range (32768 and up) so that no
/// outgoing connection can take it between this check and the server binding it, and never one
/// already handed to another server of this process.
pub fn free_port() -> u16 {
    let mut handed_out = HANDED_OUT.lock().expect("port registry lock");
    loop {
        let candidate: u16 = rand::random_range(20_000..32_000);
        if handed_out.contains(&candidate) {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", candidate)).is_ok() {
            handed_out.push(candidate);
            return candidate;
        }
    }
}

/// How many times a server is started on fresh ports before the harness gives up (a port taken
/// by something outside this process between the check and the bind).
pub(crate) const START_ATTEMPTS: usize = 3;

/// The last lines of a server's log, for errors.
pub(crate) fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// Kills a server process and reaps it.
pub(crate) fn kill(child: &mut Option<Child>) {
    if let Some(mut child) = child.take() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Waits until `ready` holds; fails at once (with the log's tail) if the process exits, and kills
/// it if it is not ready in time.
pub(crate) async fn await_ready<F, Fut>(
    child: &mut Option<Child>,
    log: &Path,
    what: &str,
    timeout: Duration,
    mut ready: F,
) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if ready().await {
            return Ok(());
        }
        let exited = match child.as_mut() {
            Some(process) => process.try_wait()?.is_some(),
            None => true,
        };
        if exited {
            bail!("the server exited while waiting for {what}:\n{}", log_tail(log));
        }
        if tokio::time::Instant::now() >= deadline {
            kill(child);
            bail!("timed out after {timeout:?} waiting for {what}:\n{}", log_tail(log));
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Whether something listens on a loopback port.
pub fn port_answers(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200)).is_ok()
}

/// The repository's nats-server configuration (it includes `nats/auth.conf`).
pub fn nats_config() -> PathBuf {
    workspace_root().join("nats").join("nats-server.conf")
}

/// The users and permissions every server of the harness includes.
pub fn nats_auth_config() -> PathBuf {
    workspace_root().join("nats").join("auth.conf")
}

/// A user of `nats/auth.conf`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NatsUser {
    /// The intake.
    Intake,
    /// A processor.
    Processor,
    /// The presigner.
    Presigner,
    /// A notifier (and its `dead-letters` command).
    Notifier,
    /// The `download-admin` command and the services' `provision` steps: creates every
    /// stream, bucket and durable consumer, and manages the identity buckets.
    Admin,
    /// Operators and test harness clients: everything.
    Ops,
}

impl NatsUser {
    /// Every user.
    pub const ALL: [NatsUser; 6] = [
        NatsUser::Intake,
        NatsUser::Processor,
        NatsUser::Presigner,
        NatsUser::Notifier,
        NatsUser::Admin,
        NatsUser::Ops,
    ];

    /// The user name (`NATS_USER`).
    pub fn name(self) -> &'static str {
        match self {
            NatsUser::Intake => "intake",
            NatsUser::Processor => "processor",
            NatsUser::Presigner => "presigner",
            NatsUser::Notifier => "notifier",
            NatsUser::Admin => "admin",
            NatsUser::Ops => "ops",
        }
    }

    /// The variable of the nats-server environment `nats/auth.conf` reads the password from.
    pub fn password_variable(self) -> String {
        format!("NATS_{}_PASSWORD", self.name().to_ascii_uppercase())
    }

    fn index(self) -> usize {
        NatsUser::ALL
            .iter()
            .position(|user| *user == self)
            .expect("every user is in ALL")
    }
}

/// Passwords of every user of `nats/auth.conf`, generated for one server or cluster.
#[derive(Clone)]
pub struct NatsCredentials {
    passwords: [String; 6],
}

impl std::fmt::Debug for NatsCredentials {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("NatsCredentials(passwords hidden)")
    }
}

impl NatsCredentials {
    /// Random passwords: a letter, then 31 letters and digits (nats-server reads an environment
    /// variable as a configuration value, so a password must not look like a number).
    pub fn generate() -> Self {
        use rand::Rng;
        let password = || {
            let mut random = rand::rng();
            let first = char::from(random.random_range(b'a'..=b'z'));
            let rest: String = (&mut random)
                .sample_iter(rand::distr::Alphanumeric)
                .take(31)
                .map(char::from)
                .collect();
            format!("{first}{rest}")
        };
        NatsCredentials {
            passwords: std::array::from_fn(|_| password()),
        }
    }

    /// The password of `user`.
    pub fn password(&self, user: NatsUser) -> &str {
        &self.passwords[user.index()]
    }

    /// The variables nats-server resolves the passwords of `nats/auth.conf` from.
    pub fn server_env(&self) -> Vec<(String, String)> {
        NatsUser::ALL
            .iter()
            .map(|user| (user.password_variable(), self.password(*user).to_string()))
            .collect()
    }

    /// The configuration of a service connecting as `user` to `urls` (comma-separated):
    /// `NATS_URL` (without credentials), `NATS_USER` and `NATS_PASSWORD`.
    pub fn env_for(&self, urls: &str, user: NatsUser) -> Vec<(String, String)> {
        vec![
            ("NATS_URL".into(), urls.to_string()),
            ("NATS_USER".into(), user.name().into()),
            ("NATS_PASSWORD".into(), self.password(user).to_string()),
        ]
    }

    /// Options connecting as `user` as a service does (`common::nats::connect`): its user and
    /// password, and its inbox prefix `_INBOX_<user>`. async-nats 0.51 ignores credentials in
    /// a URL, so connections of the harness take them from here.
    pub fn connect_options(&self, user: NatsUser) -> async_nats::ConnectOptions {
        async_nats::ConnectOptions::with_user_and_password(user.name().into(), self.password(user).into())
            .custom_inbox_prefix(common::nats::inbox_prefix(Some(user.name())))
    }
}

/// The lines of a nats-server log that report a refused publish or subscription (the server
/// logs `Publish Violation - User "intake", Subject "..."`, and sends the client
/// `Permissions Violation for Publish to "..."`).
pub fn permission_violations_in(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|line| {
            ["Publish Violation", "Subscription Violation", "Permissions Violation"]
                .iter()
                .any(|marker| line.contains(marker))
        })
        .map(str::to_string)
        .collect()
}

/// Fixed ports for a server, so it can be restarted in place.
#[derive(Debug, Clone)]
pub struct NatsPorts {
    /// Client port.
    pub client: u16,
    /// Monitoring port.
    pub monitor: u16,
}

/// A running nats-server with JetStream, the repository's configuration and its own passwords.
pub struct NatsServer {
    child: Option<Child>,
    /// Its ports.
    pub ports: NatsPorts,
    store: tempfile::TempDir,
    log: PathBuf,
    config: Option<PathBuf>,
    credentials: NatsCredentials,
}

impl NatsServer {
    /// Starts a server on free ports with `nats/nats-server.conf`.
    pub async fn start() -> anyhow::Result<Self> {
        let mut failure = None;
        for _ in 0..START_ATTEMPTS {
            let ports = NatsPorts {
                client: free_port(),
                monitor: free_port(),
            };
            match Self::start_on(ports, tempfile::tempdir()?).await {
                Ok(server) => return Ok(server),
                Err(error) => failure = Some(error),
            }
        }
        Err(failure.expect("at least one attempt"))
    }

    /// Starts a server on the given ports and store with `nats/nats-server.conf`.
    pub async fn start_on(ports: NatsPorts, store: tempfile::TempDir) -> anyhow::Result<Self> {
        Self::start_configured(ports, store, Some(nats_config())).await
    }

    /// Starts a server with a configuration file (ports given here override the file's), and
    /// generated passwords in its environment (`nats/auth.conf` reads them from there). Without
    /// a file the server lets anyone in.
    pub async fn start_configured(
        ports: NatsPorts,
        store: tempfile::TempDir,
        config: Option<PathBuf>,
    ) -> anyhow::Result<Self> {
        let mut server = NatsServer {
            child: None,
            ports,
            log: store.path().join("nats.log"),
            store,
            config,
            credentials: NatsCredentials::generate(),
        };
        server.spawn().await?;
        Ok(server)
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        // Appends, so a restart keeps the log of the run before it.
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log)?;
        let mut command = Command::new(venv_binary("nats-server")?);
        if let Some(config) = &self.config {
            command.arg("-c").arg(config);
        }
        let child = command
            .envs(self.credentials.server_env())
            .args(["-js", "-a", "127.0.0.1"])
            .args(["-p", &self.ports.client.to_string()])
            .args(["-m", &self.ports.monitor.to_string()])
            .arg("-sd")
            .arg(self.store.path().join("jetstream"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting nats-server")?;
        self.child = Some(child);
        let port = self.ports.client;
        await_ready(
            &mut self.child,
            &self.log,
            "nats-server to listen",
            Duration::from_secs(20),
            || async move { port_answers(port) },
        )
        .await?;
        Ok(())
    }

    /// `nats://127.0.0.1:<port>`, without credentials (as `NATS_URL` takes it): connect with
    /// [`client`](Self::client), [`connect_as`](Self::connect_as) or
    /// [`env_for`](Self::env_for).
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.ports.client)
    }

    /// The passwords this server was started with.
    pub fn credentials(&self) -> &NatsCredentials {
        &self.credentials
    }

    /// The configuration of a service connecting as `user`: `NATS_URL`, `NATS_USER`,
    /// `NATS_PASSWORD`.
    pub fn env_for(&self, user: NatsUser) -> Vec<(String, String)> {
        self.credentials.env_for(&self.url(), user)
    }

    /// A client connected as `user`, with the user's inbox prefix; fails at once if the server
    /// refuses it.
    pub async fn connect_as(&self, user: NatsUser) -> anyhow::Result<async_nats::Client> {
        let client = self
            .credentials
            .connect_options(user)
            .name(format!("test-harness-{}", user.name()))
            .connect(self.url())
            .await
            .with_context(|| format!("connecting to nats-server as {}", user.name()))?;
        Ok(client)
    }

    /// A client of the test itself, connected as `ops` (everything allowed).
    pub async fn client(&self) -> anyhow::Result<async_nats::Client> {
        self.connect_as(NatsUser::Ops).await
    }

    /// The server's log (every run of the server appends to it).
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The process id of the running server (for its CPU and memory in /proc).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Every publish or subscription the server refused so far, as its log reports them.
    pub fn permission_violations(&self) -> Vec<String> {
        permission_violations_in(&self.log)
    }

    /// Kills the server (its store stays).
    pub fn stop(&mut self) {
        kill(&mut self.child);
    }

    /// Starts it again on the same ports and store.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        self.spawn().await
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
        report_refusals(&self.permission_violations());
    }
}

/// Prints what a server refused (to a test's captured output, shown when it fails), so a
/// service refused something by `nats/auth.conf` is seen as the cause.
pub(crate) fn report_refusals(refused: &[String]) {
    if !refused.is_empty() {
        eprintln!(
            "nats-server refused {} publishes or subscriptions (nats/auth.conf):\n{}",
            refused.len(),
            refused.join("\n")
        );
    }
}

/// Volumes the SeaweedFS master knows (its `/vol/status`), `None` if it does not answer. After a
/// restart the S3 API answers before the volume server has registered the volumes it loaded, and
/// reading an object of a volume not yet registered fails with an internal error.
async fn served_volumes(url: &str) -> Option<usize> {
    let status: serde_json::Value = reqwest::get(url).await.ok()?.json().await.ok()?;
    let racks = status["Volumes"]["DataCenters"].as_object()?.values();
    let servers = racks
        .filter_map(|racks| racks.as_object())
        .flat_map(|racks| racks.values());
    let volumes = servers
        .filter_map(|servers| servers.as_object())
        .flat_map(|servers| servers.values())
        .filter_map(|volumes| volumes.as_array())
        .map(Vec::len)
        .sum();
    Some(volumes)
}

/// Volume files (`*.dat`) SeaweedFS keeps directly in its data directory.
fn volume_files(data: &Path) -> usize {
    std::fs::read_dir(data)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|entry| entry.path().extension().is_some_and(|extension| extension == "dat"))
                .count()
        })
        .unwrap_or(0)
}

/// Ports of one SeaweedFS `mini` process.
#[derive(Debug, Clone)]
pub struct S3Ports {
    /// The S3 API.
    pub s3: u16,
    others: Vec<u16>,
}

impl S3Ports {
    /// Free ports.
    pub fn free() -> Self {
        S3Ports {
            s3: free_port(),
            others: (0..9).map(|_| free_port()).collect(),
        }
    }

    /// The S3 API on `s3`, SeaweedFS's internal servers on the nine ports from `internal_base`.
    pub fn fixed(s3: u16, internal_base: u16) -> Self {
        S3Ports {
            s3,
            others: (0..9).map(|offset| internal_base + offset).collect(),
        }
    }

    /// Every port the process binds.
    pub fn all(&self) -> Vec<u16> {
        std::iter::once(self.s3).chain(self.others.iter().copied()).collect()
    }
}

/// A running SeaweedFS with its S3 gateway and the `downloads` bucket.
pub struct S3Server {
    child: Option<Child>,
    /// Its ports.
    pub ports: S3Ports,
    data: tempfile::TempDir,
    log: PathBuf,
}

impl S3Server {
    /// Starts SeaweedFS on free ports and waits until the bucket answers a signed HEAD.
    pub async fn start() -> anyhow::Result<Self> {
        let mut failure = None;
        for _ in 0..START_ATTEMPTS {
            match Self::start_on(S3Ports::free(), tempfile::tempdir()?).await {
                Ok(server) => return Ok(server),
                Err(error) => failure = Some(error),
            }
        }
        Err(failure.expect("at least one attempt"))
    }

    /// Starts SeaweedFS on the given ports and data dir.
    pub async fn start_on(ports: S3Ports, data: tempfile::TempDir) -> anyhow::Result<Self> {
        let mut server = S3Server {
            child: None,
            ports,
            log: data.path().join("weed.log"),
            data,
        };
        server.spawn().await?;
        Ok(server)
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        let log = std::fs::File::create(&self.log)?;
        let other = &self.ports.others;
        let child = Command::new(venv_binary("weed")?)
            .arg("mini")
            .arg(format!("-dir={}", self.data.path().join("data").display()))
            .args(["-ip=127.0.0.1", "-ip.bind=127.0.0.1"])
            .arg(format!("-s3.port={}", self.ports.s3))
            .arg(format!("-master.port={}", other[0]))
            .arg(format!("-master.port.grpc={}", other[1]))
            .arg(format!("-volume.port={}", other[2]))
            .arg(format!("-volume.port.grpc={}", other[3]))
            .arg(format!("-filer.port={}", other[4]))
            .arg(format!("-filer.port.grpc={}", other[5]))
            .arg(format!("-s3.port.grpc={}", other[6]))
            .arg(format!("-admin.port={}", other[7]))
            .arg(format!("-admin.port.grpc={}", other[8]))
            .args([
                "-admin.ui=false",
                "-webdav=false",
                "-s3.port.iceberg=0",
                "-s3.port.lance=0",
            ])
            .arg(format!("-bucket={S3_BUCKET}"))
            .env("AWS_ACCESS_KEY_ID", S3_ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", S3_SECRET_KEY)
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting weed mini")?;
        std::fs::create_dir_all(self.data.path().join("data"))?;
        self.child = Some(child);
        let storage = Storage::new(&self.settings())?;
        let volumes_url = format!("http://127.0.0.1:{}/vol/status", other[0]);
        let data = self.data.path().join("data");
        await_ready(
            &mut self.child,
            &self.log,
            "the S3 bucket to answer a signed HEAD and every volume on disk to be served",
            Duration::from_secs(30),
            || {
                let storage = storage.clone();
                let volumes_url = volumes_url.clone();
                let data = data.clone();
                async move {
                    storage.check_bucket().await.is_ok()
                        && served_volumes(&volumes_url).await >= Some(volume_files(&data))
                }
            },
        )
        .await?;
        Ok(())
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.ports.s3)
    }

    /// The process id of the running `weed mini` (for its CPU and memory in /proc).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The configuration variables that point a service here.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("S3_ENDPOINT".into(), self.endpoint()),
            ("S3_REGION".into(), "us-east-1".into()),
            ("S3_ACCESS_KEY_ID".into(), S3_ACCESS_KEY.into()),
            ("S3_SECRET_ACCESS_KEY".into(), S3_SECRET_KEY.into()),
            ("S3_BUCKET_NAME".into(), S3_BUCKET.into()),
            ("S3_FORCE_PATH_STYLE".into(), "true".into()),
            ("S3_REQUEST_TIMEOUT_MS".into(), "3000".into()),
        ]
    }

    /// S3 settings pointing here.
    pub fn settings(&self) -> S3Settings {
        S3Settings::from_env(&Env::from_pairs(self.env())).expect("test S3 settings are valid")
    }

    /// Kills the server (its data stays).
    pub fn stop(&mut self) {
        kill(&mut self.child);
    }

    /// Starts it again on the same ports and data.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        self.spawn().await
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// nginx in front of the intake and the notifier, with the production template of
/// `deploy/nginx/downloads.conf.template`, on a free port with a temp dir.
pub struct NginxServer {
    child: Option<Child>,
    /// Where it listens.
    pub port: u16,
    dir: tempfile::TempDir,
}

/// The nginx binary: on the PATH or where Debian installs it.
pub fn nginx_binary() -> anyhow::Result<PathBuf> {
    for candidate in ["/usr/sbin/nginx", "/usr/bin/nginx", "/usr/local/sbin/nginx"] {
        if Path::new(candidate).exists() {
            return Ok(PathBuf::from(candidate));
        }
    }
    bail!("nginx is missing: run deploy/local/install first")
}

/// Renders the production template with only its own variables replaced.
pub fn render_nginx_template(variables: &[(&str, String)]) -> anyhow::Result<String> {
    let mut text = std::fs::read_to_string(workspace_root().join("deploy/nginx/downloads.conf.template"))?;
    for (name, value) in variables {
        text = text.replace(&format!("${{{name}}}"), value);
    }
    Ok(text)
}

impl NginxServer {
    /// Starts nginx on `port` (0: a free one) proxying to `intake` and `notifier`.
    pub async fn start(
        port: u16,
        intake: std::net::SocketAddr,
        notifier: std::net::SocketAddr,
        read_timeout: &str,
        stream_timeout: &str,
    ) -> anyhow::Result<Self> {
        Self::start_with_upstreams(port, &[intake], &[notifier], read_timeout, stream_timeout).await
    }

    /// Starts nginx on `port` (0: a free one) balancing over several intakes and notifiers.
    pub async fn start_with_upstreams(
        port: u16,
        intakes: &[std::net::SocketAddr],
        notifiers: &[std::net::SocketAddr],
        read_timeout: &str,
        stream_timeout: &str,
    ) -> anyhow::Result<Self> {
        Self::start_rendered(port, intakes, notifiers, read_timeout, stream_timeout, "").await
    }

    /// Starts nginx as a gateway that authenticated every client as `user` (the template's
    /// `GATEWAY_USER`, for `AUTH_MODE=gateway` behind it), whatever tenant header clients send.
    pub async fn start_as_gateway(
        intake: std::net::SocketAddr,
        notifier: std::net::SocketAddr,
        user: &str,
    ) -> anyhow::Result<Self> {
        Self::start_rendered(0, &[intake], &[notifier], "10s", "1h", user).await
    }

    /// The access log's lines so far.
    pub fn access_log(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.path().join("access.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    async fn start_rendered(
        port: u16,
        intakes: &[std::net::SocketAddr],
        notifiers: &[std::net::SocketAddr],
        read_timeout: &str,
        stream_timeout: &str,
        gateway_user: &str,
    ) -> anyhow::Result<Self> {
        let servers = |addresses: &[std::net::SocketAddr]| {
            addresses
                .iter()
                .map(|address| format!("server {address};"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let port = if port == 0 { free_port() } else { port };
        let dir = tempfile::tempdir()?;
        let site = render_nginx_template(&[
            ("LISTEN", format!("127.0.0.1:{port}")),
            ("INTAKE_UPSTREAM", servers(intakes)),
            ("NOTIFIER_UPSTREAM", servers(notifiers)),
            ("READ_TIMEOUT", read_timeout.to_string()),
            ("STREAM_TIMEOUT", stream_timeout.to_string()),
            ("ACCESS_LOG", dir.path().join("access.log").display().to_string()),
            ("GATEWAY_HEADER", "X-User-Id".to_string()),
            ("GATEWAY_USER", gateway_user.to_string()),
        ])?;
        std::fs::write(dir.path().join("downloads.conf"), site)?;
        let root = dir.path().display().to_string();
        let main = format!(
            "daemon off;\nmaster_process off;\npid {root}/nginx.pid;\nerror_log {root}/error.log warn;\n\
             events {{ worker_connections 4096; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {root}/body;\n  proxy_temp_path {root}/proxy;\n\
               fastcgi_temp_path {root}/fastcgi;\n  uwsgi_temp_path {root}/uwsgi;\n  scgi_temp_path {root}/scgi;\n\
               include {root}/downloads.conf;\n}}\n"
        );
        std::fs::write(dir.path().join("nginx.conf"), main)?;
        let log = dir.path().join("error.log");
        let child = Command::new(nginx_binary()?)
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(dir.path().join("nginx.conf"))
            .arg("-e")
            .arg(&log)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("stderr.log"))?)
            .spawn()
            .context("starting nginx")?;
        let mut server = NginxServer {
            child: Some(child),
            port,
            dir,
        };
        let log = server.dir.path().join("stderr.log");
        await_ready(
            &mut server.child,
            &log,
            "nginx to listen",
            Duration::from_secs(20),
            || async move { port_answers(port) },
        )
        .await?;
        Ok(server)
    }

    /// `http://127.0.0.1:<port>`.
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for NginxServer {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}
