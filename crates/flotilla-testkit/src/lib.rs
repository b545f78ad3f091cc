//! Test and demo support, kept out of the libraries users import: a throwaway `nats-server`
//! process with its own JetStream directory, on a free port, killed when dropped. The demo uses
//! it when no server answers; every end-to-end test starts one.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Why a server could not be started.
#[derive(Debug, thiserror::Error)]
pub enum NatsServerError {
    #[error(
        "`nats-server` was not found on PATH; install it (Debian/Ubuntu: `apt-get install nats-server`, \
         macOS: `brew install nats-server`, or a release from github.com/nats-io/nats-server)"
    )]
    NotInstalled,
    #[error("starting nats-server: {0}")]
    Io(#[from] std::io::Error),
    #[error("nats-server did not accept connections {at} within {waited:?}")]
    NotReady { at: String, waited: Duration },
}

/// A running `nats-server`; killed (and its JetStream directory removed) on drop.
#[derive(Debug)]
pub struct NatsServer {
    child: Child,
    port: u16,
    store: std::path::PathBuf,
    /// The config file it was started with, if any (kept in `store`, reused by `restart`).
    config: Option<std::path::PathBuf>,
}

impl NatsServer {
    /// Starts `nats-server -js` on a free loopback port.
    pub fn start() -> Result<NatsServer, NatsServerError> {
        let store = std::env::temp_dir().join(format!("flotilla-nats-{}", nuid::next()));
        std::fs::create_dir_all(&store)?;
        let (child, port) = Self::start_on(None, &store, None)?;
        Ok(NatsServer {
            child,
            port,
            store,
            config: None,
        })
    }

    /// Starts `nats-server` with a config file made of `text` after two lines this adds:
    /// `listen` on a free loopback port and `jetstream { store_dir }` in a fresh directory.
    /// For users, permissions and accounts (`text` must not set `listen` or `jetstream`).
    pub fn start_with_config(text: &str) -> Result<NatsServer, NatsServerError> {
        let store = std::env::temp_dir().join(format!("flotilla-nats-{}", nuid::next()));
        std::fs::create_dir_all(&store)?;
        let config = store.join("nats.conf");
        let write = |listen: &str| {
            std::fs::write(
                &config,
                format!(
                    "listen: \"127.0.0.1:{listen}\"\njetstream {{ store_dir: {:?} }}\n{text}\n",
                    store.join("js").display().to_string()
                ),
            )
        };
        write("-1")?;
        let (child, port) = Self::start_on(None, &store, Some(&config))?;
        // A restart must come back on the same port.
        write(&port.to_string())?;
        Ok(NatsServer {
            child,
            port,
            store,
            config: Some(config),
        })
    }

    /// Starts a server on `port`, or on a port it picks itself (`-p -1`), and returns once it
    /// listens, with the port. The server writes the ports it listens on into a file named
    /// after its pid (`--ports_file_dir`), so the port is known to be this server's: probing
    /// for a free port first let two tests pick the same one, and the loser's readiness check
    /// then connected to the winner's server.
    fn start_on(
        port: Option<u16>,
        store: &Path,
        config: Option<&Path>,
    ) -> Result<(Child, u16), NatsServerError> {
        let mut command = Command::new("nats-server");
        match config {
            // The file says where to listen; a config error is reported as the exit status.
            Some(config) => command.arg("-c").arg(config),
            None => command
                .args(["-a", "127.0.0.1", "-p"])
                .arg(port.map_or("-1".to_owned(), |p| p.to_string()))
                .args(["-js", "-sd"])
                .arg(store),
        };
        let mut child = command
            .arg("--ports_file_dir")
            .arg(store)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => NatsServerError::NotInstalled,
                _ => NatsServerError::Io(e),
            })?;
        let suffix = format!("_{}.ports", child.id());
        let waited = Duration::from_secs(10);
        let start = Instant::now();
        let mut learned = port;
        while start.elapsed() < waited {
            if let Some(port) = listening_port(store, &suffix) {
                learned = Some(port);
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Ok((child, port));
                }
            }
            if let Some(status) = child.try_wait()? {
                return Err(NatsServerError::Io(std::io::Error::other(format!(
                    "nats-server exited with {status}"
                ))));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        Err(NatsServerError::NotReady {
            at: learned.map_or_else(
                || "(it never wrote its ports file)".to_owned(),
                |port| format!("on port {port}"),
            ),
            waited,
        })
    }

    /// Kills the server and starts a new one on the same port with the same JetStream
    /// directory: what a broker restart looks like to its clients.
    pub fn restart(&mut self) -> Result<(), NatsServerError> {
        self.kill();
        self.start_again()
    }

    /// Kills the server (SIGKILL): a broker outage until [`NatsServer::start_again`].
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the server again on its port with its JetStream directory, after
    /// [`NatsServer::kill`]; returns once it accepts connections.
    pub fn start_again(&mut self) -> Result<(), NatsServerError> {
        // The port is ours again once the old process is gone; the OS may take a moment to
        // let it be bound again.
        let mut last = None;
        for _ in 0..50 {
            match Self::start_on(Some(self.port), &self.store, self.config.as_deref()) {
                Ok((child, _)) => {
                    self.child = child;
                    return Ok(());
                }
                Err(e @ NatsServerError::NotInstalled) => return Err(e),
                Err(e) => last = Some(e),
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(last.expect("at least one attempt"))
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.store);
    }
}

/// The client port in the ports file ending in `suffix` (`_<pid>.ports`) in `dir`, once the
/// server has written it: `{"nats":["nats://127.0.0.1:4222"]}`.
fn listening_port(dir: &Path, suffix: &str) -> Option<u16> {
    let entry = std::fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .find(|e| e.file_name().to_string_lossy().ends_with(suffix))?;
    let text = std::fs::read_to_string(entry.path()).ok()?;
    // Unparsable while the server is still writing it: the caller reads it again.
    let ports: serde_json::Value = serde_json::from_str(&text).ok()?;
    let url = ports["nats"].get(0)?.as_str()?;
    url.rsplit_once(':')?.1.parse().ok()
}
