//! Shared test fixtures: a real nats-server per test, in-process workers, raw requests, and an
//! independent forward pass to check predictions against.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use bytes::Bytes;
use flotilla_model::Model;
use flotilla_registry::Registry;
pub use flotilla_testkit::NatsServer;
use flotilla_worker::WorkerConfig;
use flotilla_worker::{self as worker, Selection, ServedModel, Source, WorkerError};
use flotilla_worker::{Health, Metrics};
use serde_json::Value;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Every wait in the tests is bounded by this.
pub const WAIT: Duration = Duration::from_secs(20);

pub fn repo_path(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(rel)
}

pub fn example_json(name: &str) -> Value {
    let text = std::fs::read_to_string(repo_path(&format!("models/{name}.json"))).unwrap();
    serde_json::from_str(&text).unwrap()
}

pub fn example_model(name: &str) -> Model {
    Model::load(&repo_path(&format!("models/{name}.json"))).unwrap()
}

pub fn server() -> NatsServer {
    NatsServer::start().expect("nats-server must be on PATH for the tests")
}

pub async fn connect(server: &NatsServer) -> async_nats::Client {
    async_nats::connect(server.url()).await.unwrap()
}

/// Settings for a test worker: no metrics endpoint, two compute threads.
pub fn config(server: &NatsServer) -> WorkerConfig {
    let mut c = WorkerConfig::default();
    c.nats.url = server.url();
    c.metrics_addr = String::new();
    c.compute_threads = 2;
    c
}

/// A worker running in this process until [`Worker::stop`] or drop.
pub struct Worker {
    pub metrics: Metrics,
    pub health: Arc<Health>,
    shutdown: CancellationToken,
    task: Option<JoinHandle<Result<(), WorkerError>>>,
}

impl Worker {
    pub async fn start(config: WorkerConfig, models: Vec<(&str, Model)>) -> Worker {
        let served = models
            .into_iter()
            .map(|(name, model)| ServedModel {
                name: name.into(),
                version: 1,
                model: Arc::new(model),
            })
            .collect();
        Worker::start_with(config, |_| Source::Fixed(served)).await
    }

    /// A worker following the registry for `models` (`*` for all).
    pub async fn follow(config: WorkerConfig, models: &str) -> Worker {
        let selection = Selection::parse(models).unwrap();
        let client = config.nats.connect("test-registry").await.unwrap();
        let registry = Registry::open(client, &config.registry).await.unwrap();
        let trusted = Arc::new(config.registry.trusted().unwrap());
        Worker::start_with(config, move |_| Source::Registry {
            registry: Box::new(registry),
            models: selection,
            trusted,
        })
        .await
    }

    async fn start_with(
        config: WorkerConfig,
        source: impl FnOnce(&WorkerConfig) -> Source,
    ) -> Worker {
        let client = config.nats.connect("test-worker").await.unwrap();
        let metrics = Metrics::new();
        let health = Arc::new(Health::default());
        let shutdown = CancellationToken::new();
        let source = source(&config);
        let task = tokio::spawn({
            let (metrics, health, shutdown) = (metrics.clone(), health.clone(), shutdown.clone());
            async move { worker::run(client, &config, source, metrics, health, shutdown).await }
        });
        let w = Worker {
            metrics,
            health,
            shutdown,
            task: Some(task),
        };
        tokio::time::timeout(WAIT, async {
            while w.health.readiness().is_err() {
                assert!(
                    !w.task.as_ref().unwrap().is_finished(),
                    "the worker stopped while starting"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("worker did not become ready");
        w
    }

    /// Graceful shutdown; returns what the worker returned.
    pub async fn stop(mut self) -> Result<(), WorkerError> {
        self.shutdown.cancel();
        let task = self.task.take().unwrap();
        tokio::time::timeout(WAIT, task)
            .await
            .expect("worker stop timed out")
            .unwrap()
    }

    /// The value of one sample line of the Prometheus text, e.g.
    /// `flotilla_requests_total{code="200",model="iris",version="1"}`.
    pub fn metric(&self, series: &str) -> f64 {
        let text = self.metrics.render();
        text.lines()
            .find_map(|l| {
                l.strip_prefix(series)
                    .and_then(|rest| rest.strip_prefix(' '))
            })
            .map(|v| v.trim().parse().unwrap())
            .unwrap_or_else(|| panic!("no series {series} in\n{text}"))
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A raw reply, headers and body.
pub struct Reply {
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.get(name).map(|v| v.as_str().to_owned())
    }

    /// The body as JSON, whichever encoding it came in.
    pub fn json(&self) -> Value {
        match self.header("Content-Type").as_deref() {
            Some("application/msgpack") => rmp_serde::from_slice(&self.body).unwrap(),
            _ => serde_json::from_slice(&self.body)
                .unwrap_or_else(|e| panic!("reply is not JSON ({e}): {:?}", self.body)),
        }
    }

    pub fn is_msgpack(&self) -> bool {
        self.header("Content-Type").as_deref() == Some("application/msgpack")
    }

    /// The error code in the service-error header, if an error.
    pub fn error_code(&self) -> Option<u16> {
        self.header("Nats-Service-Error-Code")
            .map(|c| c.parse().unwrap())
    }
}

/// Sends `body` with `headers` to `flotilla.predict.<model>`.
pub async fn request(
    nats: &async_nats::Client,
    model: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Reply {
    let mut h = HeaderMap::new();
    for (k, v) in headers {
        h.insert(*k, *v);
    }
    let message = tokio::time::timeout(
        WAIT,
        nats.request_with_headers(format!("flotilla.predict.{model}"), h, body.into()),
    )
    .await
    .expect("no reply in time")
    .expect("request failed");
    Reply {
        headers: message.headers.unwrap_or_default(),
        body: message.payload,
    }
}

pub fn msgpack(value: &Value) -> Vec<u8> {
    rmp_serde::to_vec_named(value).unwrap()
}

/// The forward pass written from the format's definition with plain loops over the JSON
/// artifact, sharing no code with the library.
pub fn reference_forward(artifact: &Value, row: &[f64]) -> Vec<f64> {
    let nums = |v: &Value| -> Vec<f64> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect()
    };
    let mut h: Vec<f64> = row.to_vec();
    if let Some(scaler) = artifact.get("scaler") {
        let (mean, std) = (nums(&scaler["mean"]), nums(&scaler["std"]));
        for i in 0..h.len() {
            h[i] = (h[i] - mean[i]) / std[i];
        }
    }
    for layer in artifact["layers"].as_array().unwrap() {
        let weights: Vec<Vec<f64>> = layer["weights"]
            .as_array()
            .unwrap()
            .iter()
            .map(nums)
            .collect();
        let bias = nums(&layer["bias"]);
        let mut z = bias.clone();
        for (j, zj) in z.iter_mut().enumerate() {
            for (i, hi) in h.iter().enumerate() {
                *zj += hi * weights[i][j];
            }
        }
        h = match layer["activation"].as_str().unwrap() {
            "identity" => z,
            "relu" => z.iter().map(|v| v.max(0.0)).collect(),
            "tanh" => z.iter().map(|v| v.tanh()).collect(),
            "sigmoid" => z.iter().map(|v| 1.0 / (1.0 + (-v).exp())).collect(),
            "softmax" => {
                let m = z.iter().cloned().fold(f64::MIN, f64::max);
                let e: Vec<f64> = z.iter().map(|v| (v - m).exp()).collect();
                let s: f64 = e.iter().sum();
                e.iter().map(|v| v / s).collect()
            }
            other => panic!("unknown activation {other}"),
        };
    }
    h
}

/// Dense models compute in f32 (6e-8 per rounding) and promise outputs within 1e-5 relative
/// of the f64 reference; the 1e-6 floor is for outputs near zero, whose error scales with the
/// terms summed rather than with the result (the example models' terms are of order one).
pub fn assert_close(got: &[f64], want: &[f64], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    for (g, w) in got.iter().zip(want) {
        assert!(
            (g - w).abs() <= 1e-5 * w.abs() + 1e-6,
            "{what}: got {got:?}, want {want:?}"
        );
    }
}

/// Rows of plausible inputs, different per `seed`.
pub fn rows(n: usize, features: usize, seed: usize) -> Vec<Vec<f64>> {
    (0..n)
        .map(|r| {
            (0..features)
                .map(|c| 1.0 + ((seed * 7 + r * 13 + c * 5) % 23) as f64 / 4.0)
                .collect()
        })
        .collect()
}

/// An MLP big enough that one batch takes milliseconds: for tests that need the compute busy.
pub fn slow_model(inputs: usize) -> Model {
    let width = 384;
    let layer = |n_in: usize, n_out: usize, act: &str| {
        serde_json::json!({
            "weights": (0..n_in).map(|i| (0..n_out).map(|j| (((i * 31 + j * 17) % 13) as f64 - 6.0) / 100.0).collect::<Vec<_>>()).collect::<Vec<_>>(),
            "bias": vec![0.0; n_out],
            "activation": act,
        })
    };
    let artifact = serde_json::json!({
        "format": "flotilla.model.v1",
        "inputs": inputs,
        "outputs": 2,
        "layers": [layer(inputs, width, "tanh"), layer(width, width, "tanh"), layer(width, width, "tanh"), layer(width, 2, "softmax")],
    });
    Model::from_bytes(&serde_json::to_vec(&artifact).unwrap()).unwrap()
}

/// A `flotilla worker` process serving `name` from `models/<file>.json`, with `extra` flags,
/// stderr piped (for tests that read the log), killed on drop.
pub fn worker_process(
    server: &NatsServer,
    name: &str,
    file: &str,
    extra: &[&str],
) -> tokio::process::Child {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .args(["worker", "--nats", &server.url()])
        .arg("--model")
        .arg(format!(
            "{name}={}",
            repo_path(&format!("models/{file}.json")).display()
        ))
        .args(extra)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// Waits until `model` answers a prediction of `features` ones.
pub async fn wait_answering(client: &flotilla_proto::Client, model: &str, features: usize) {
    tokio::time::timeout(WAIT, async {
        while client.predict(model, &[vec![1.0; features]]).await.is_err() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("worker never answered");
}

/// Asks a worker process to drain and exit, as an orchestrator would.
pub fn sigterm(child: &tokio::process::Child) {
    let pid = nix::unistd::Pid::from_raw(child.id().expect("still running") as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
}
