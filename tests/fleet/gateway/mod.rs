//! The HTTP gateway end to end: a real nats-server, real in-process workers, the real gateway
//! on 127.0.0.1:0 and a real HTTP client (reqwest). Fake responders stand in for a worker
//! where a test must see exactly what reached NATS, or hold a request.
//!
//! - `native`: `POST /predict`, `POST /models/<m>/predict`, header pass-through, error mapping.
//! - `oip`: the Open Inference Protocol routes, JSON and binary tensors, metadata, readiness.
//! - `security`: bearer tokens, TLS, shutdown under load, metrics, the `flotilla gateway` process.
//! - `python`: `scripts/check_tritonclient.py` (tritonclient.http) against a live gateway.
//! - `text`: a text-embedding model (tiny-bert) through the native route and KServe V2.

mod native;
mod oip;
mod python;
mod security;
mod text;

use std::time::Duration;

use flotilla_gateway::{GatewayConfig, GatewayError, Metrics};
use futures::StreamExt;
use serde_json::Value;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::support::*;

/// A gateway serving in this process until [`Gateway::stop`] or drop.
pub struct Gateway {
    /// `http://127.0.0.1:<port>` (or `https://localhost:<port>` with TLS).
    pub url: String,
    pub metrics: Metrics,
    pub shutdown: CancellationToken,
    task: Option<JoinHandle<Result<(), GatewayError>>>,
}

/// Gateway settings for a test: this server, no metrics endpoint, short discovery cache.
pub fn gateway_config(server: &NatsServer) -> GatewayConfig {
    let mut c = GatewayConfig::default();
    c.nats.url = server.url();
    c.metrics_addr = String::new();
    c.discovery_cache_ms = 200;
    c
}

impl Gateway {
    pub async fn start(config: GatewayConfig) -> Gateway {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let url = match config.tls_cert {
            Some(_) => format!("https://localhost:{port}"),
            None => format!("http://127.0.0.1:{port}"),
        };
        let nats = config.nats.connect("test-gateway").await.unwrap();
        let metrics = Metrics::new();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(flotilla_gateway::serve(
            listener,
            config,
            nats,
            metrics.clone(),
            shutdown.clone(),
        ));
        Gateway {
            url,
            metrics,
            shutdown,
            task: Some(task),
        }
    }

    pub fn at(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    /// Graceful shutdown; returns what `serve` returned.
    pub async fn stop(mut self) -> Result<(), GatewayError> {
        self.shutdown.cancel();
        let task = self.task.take().unwrap();
        tokio::time::timeout(WAIT, task)
            .await
            .expect("gateway stop timed out")
            .unwrap()
    }

    /// The value of one sample line of the Prometheus text, 0 when absent.
    pub fn metric(&self, series: &str) -> f64 {
        self.metrics
            .render()
            .lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ').map(str::to_owned))
            .map_or(0.0, |v| v.trim().parse().unwrap())
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub fn http() -> reqwest::Client {
    reqwest::Client::builder().timeout(WAIT).build().unwrap()
}

/// An HTTP answer: status, headers and body.
pub struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: bytes::Bytes,
}

impl Answer {
    pub async fn from(response: reqwest::Response) -> Answer {
        Answer {
            status: response.status().as_u16(),
            headers: response.headers().clone(),
            body: response.bytes().await.unwrap(),
        }
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    /// The OIP error message, checking the status and the `{"error": "..."}` shape.
    pub fn oip_error(&self, status: u16) -> String {
        assert_eq!(self.status, status, "body: {:?}", self.body);
        let body = self.json();
        assert_eq!(body.as_object().unwrap().len(), 1, "{body}");
        body["error"].as_str().expect("a string error").to_owned()
    }
}

pub async fn post_json(url: &str, body: &Value) -> Answer {
    post(url, &[], serde_json::to_vec(body).unwrap()).await
}

pub async fn post(url: &str, headers: &[(&str, &str)], body: impl Into<reqwest::Body>) -> Answer {
    let mut request = http().post(url).body(body);
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    Answer::from(request.send().await.unwrap()).await
}

pub async fn get(url: &str) -> Answer {
    Answer::from(http().get(url).send().await.unwrap()).await
}

/// A subscriber to every predict subject: sees each message that reaches NATS.
pub struct Tap(async_nats::Subscriber);

impl Tap {
    pub async fn start(nats: &async_nats::Client) -> Tap {
        let mut sub = nats.subscribe("flotilla.predict.>").await.unwrap();
        // A flush only empties the socket; a marker coming back proves the server has the
        // subscription, so nothing sent after this returns can slip past the tap.
        nats.publish("flotilla.predict.tap-ready", "".into())
            .await
            .unwrap();
        let marker = tokio::time::timeout(WAIT, sub.next())
            .await
            .expect("the tap's marker never came back")
            .unwrap();
        assert_eq!(marker.subject.as_str(), "flotilla.predict.tap-ready");
        Tap(sub)
    }

    pub async fn next(&mut self) -> async_nats::Message {
        tokio::time::timeout(WAIT, self.0.next())
            .await
            .expect("nothing reached NATS")
            .unwrap()
    }

    /// Sends `probe` through the gateway and checks it is the next message on NATS: whatever
    /// the test sent before it never reached NATS.
    pub async fn assert_nothing_before(
        &mut self,
        probe: impl std::future::Future<Output = Answer>,
    ) {
        let answer = probe.await;
        let first = self.next().await;
        assert!(
            first
                .payload
                .windows(PROBE.len())
                .any(|w| w == PROBE.as_bytes()),
            "something reached NATS before the probe: {:?} (probe answer {}: {:?})",
            first.payload,
            answer.status,
            answer.body
        );
    }
}

/// A marker carried in a probe request's `id`.
pub const PROBE: &str = "probe-7f3a";

/// Answers `flotilla.predict.<model>` with `reply(request)` for as long as it runs.
pub async fn fake_worker(
    nats: &async_nats::Client,
    model: &str,
    reply: impl Fn(&async_nats::Message) -> Vec<u8> + Send + 'static,
) -> JoinHandle<()> {
    let mut sub = nats
        .subscribe(format!("flotilla.predict.{model}"))
        .await
        .unwrap();
    nats.flush().await.unwrap();
    let nats = nats.clone();
    tokio::spawn(async move {
        while let Some(m) = sub.next().await {
            if let Some(to) = m.reply.clone() {
                nats.publish(to, reply(&m).into()).await.unwrap();
            }
        }
    })
}

/// Waits (bounded) until `check` holds.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    tokio::time::timeout(WAIT, async {
        while !check().await {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting until {what}"));
}
