//! The `cluster` scenario: a three-node JetStream cluster on loopback loses the node leading
//! the manifests stream while registry workers follow it and a client keeps asking.

use super::*;

/// The server names and ports of a three-node cluster on loopback, and its processes.
pub(crate) struct Cluster {
    dir: PathBuf,
    ports: Vec<u16>,
    nodes: Vec<Option<std::process::Child>>,
}

impl Cluster {
    fn start() -> anyhow::Result<Cluster> {
        let dir = std::env::temp_dir().join(format!("flotilla-faults-{}", nuid::next()));
        std::fs::create_dir_all(&dir)?;
        let ports: Vec<u16> = (0..6).map(|_| free_port()).collect::<Result<_, _>>()?;
        let routes: Vec<String> = (0..3)
            .map(|i| format!("nats-route://127.0.0.1:{}", ports[3 + i]))
            .collect();
        for i in 0..3 {
            let conf = format!(
                "server_name: n{i}\nlisten: 127.0.0.1:{}\njetstream {{ store_dir: {:?} }}\n\
                 cluster {{\n  name: flotilla-faults\n  listen: 127.0.0.1:{}\n  routes: [{}]\n}}\n",
                ports[i],
                dir.join(format!("n{i}")).display().to_string(),
                ports[3 + i],
                routes.join(", ")
            );
            std::fs::write(dir.join(format!("n{i}.conf")), conf)?;
        }
        let mut cluster = Cluster {
            dir,
            ports,
            nodes: vec![None, None, None],
        };
        for i in 0..3 {
            cluster.start_node(i)?;
        }
        Ok(cluster)
    }

    fn start_node(&mut self, i: usize) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("n{i}.log")))?;
        let child = std::process::Command::new("nats-server")
            .arg("-c")
            .arg(self.dir.join(format!("n{i}.conf")))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting nats-server")?;
        self.nodes[i] = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.ports[i])).is_err() {
            anyhow::ensure!(Instant::now() < deadline, "node n{i} did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    fn kill_node(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn urls(&self) -> String {
        (0..3)
            .map(|i| format!("nats://127.0.0.1:{}", self.ports[i]))
            .collect::<Vec<_>>()
            .join(",")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..3 {
            self.kill_node(i);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub(crate) async fn cluster(fleet: &Fleet, rounds: usize) -> anyhow::Result<bool> {
    let mut cluster = Cluster::start()?;
    let urls = cluster.urls();
    let config = RegistryConfig {
        replicas: 3,
        ..RegistryConfig::default()
    };
    // JetStream needs a meta leader before a replicated stream can be created.
    let operator = connect(&urls).await?;
    let start = Instant::now();
    let registry = loop {
        match Registry::open(operator.clone(), &config).await {
            Ok(r) => break r,
            Err(e) if start.elapsed() < Duration::from_secs(60) => {
                note(&format!("waiting for JetStream: {e}"));
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => bail!("the cluster's JetStream never came up: {e}"),
        }
    };
    println!(
        "cluster: 3 nodes up, registry buckets with 3 replicas after {}",
        ms(start.elapsed())
    );
    let artifacts = [
        std::fs::read(repo().join("models/iris.json"))?,
        std::fs::read(repo().join("models/mlp.json"))?,
    ];
    let mut version = publish(&registry, &artifacts[0]).await?.0;
    let env = [("FLOTILLA_REGISTRY_REPLICAS", "3")];
    let logs = std::env::temp_dir().join(format!("flotilla-faults-logs-{}", nuid::next()));
    std::fs::create_dir_all(&logs)?;
    let log_files = [logs.join("worker-a.log"), logs.join("worker-b.log")];
    let _workers = [
        fleet.worker_logged(&urls, None, &env, Some(&log_files[0])),
        fleet.worker_logged(&urls, None, &env, Some(&log_files[1])),
    ];
    println!("worker logs: {}", logs.display());
    let client = Client::new(connect(&urls).await?);
    served_by_all(&client, version, Duration::from_secs(30))
        .await
        .context("the registry workers never served version 1")?;
    let stop = CancellationToken::new();
    let (counts, tasks) = load(client.clone(), Duration::from_secs(1), 5, stop.clone());
    let js = async_nats::jetstream::new(operator.clone());
    let mut all = true;
    for round in 1..=rounds {
        let leader = stream_leader(&js, "KV_flotilla-manifests").await;
        let Some(node) = leader
            .as_deref()
            .and_then(|l| l.strip_prefix('n'))
            .and_then(|n| n.parse::<usize>().ok())
        else {
            println!("round {round}: no leader found for the manifests stream");
            all = false;
            break;
        };
        cluster.kill_node(node);
        let killed = Instant::now();
        let published = publish(&registry, &artifacts[round % 2]).await;
        let (new_version, attempts) = match published {
            Ok(v) => v,
            Err(e) => {
                println!(
                    "round {round}: killed n{node} (manifests leader); publishing failed: {e:#}"
                );
                all = false;
                cluster.start_node(node)?;
                continue;
            }
        };
        let publish_took = killed.elapsed();
        version = new_version;
        let served = served_by_all(&client, version, Duration::from_secs(60)).await;
        println!(
            "round {round}: killed n{node} (manifests stream leader); version {version} published {} after the kill ({attempts} attempts); served by every worker {}",
            ms(publish_took),
            served
                .map(|d| format!("{} after publishing", ms(d)))
                .unwrap_or_else(|| "NEVER (60 s)".into())
        );
        if served.is_none() {
            all = false;
            let seen = worker_versions(client.nats()).await;
            println!("         what each worker reports serving: {seen:?}");
            for path in &log_files {
                let text = std::fs::read_to_string(path).unwrap_or_default();
                let warnings: Vec<&str> = text
                    .lines()
                    .filter(|l| l.contains("WARN") || l.contains("ERROR"))
                    .collect();
                println!(
                    "         {}: {} warnings, the last: {:?}",
                    path.display(),
                    warnings.len(),
                    warnings.iter().rev().take(3).collect::<Vec<_>>()
                );
            }
        }
        cluster.start_node(node)?;
        let rejoined = rejoined(&js, Duration::from_secs(60)).await;
        println!(
            "         n{node} restarted; both streams' replicas current again {}",
            rejoined
                .map(|d| format!("after {}", ms(d)))
                .unwrap_or_else(|| "NOT within 60 s".into())
        );
    }
    finish(stop, tasks).await;
    println!(
        "load through all rounds (retrying client): {}",
        counts.line()
    );
    let versions = counts.versions.lock().unwrap().clone();
    println!("answers by version: {versions:?}");
    let failed = Counts::get(&counts.failed);
    Ok(verdict(
        "cluster",
        all && failed == 0,
        &format!("every published version served: {all}; {failed} requests failed after retries"),
    ))
}

/// Progress detail, printed with FAULTS_VERBOSE=1.
fn note(text: &str) {
    if std::env::var_os("FAULTS_VERBOSE").is_some() {
        eprintln!("{text}");
    }
}

/// Publishes (promoting) with retries for up to 60 s: the version and the attempts it took.
async fn publish(registry: &Registry, artifact: &[u8]) -> anyhow::Result<(u64, usize)> {
    let start = Instant::now();
    let mut attempts = 0;
    loop {
        attempts += 1;
        let tried = tokio::time::timeout(
            Duration::from_secs(20),
            registry.publish(MODEL, artifact, Default::default(), None, Promote::Always),
        )
        .await;
        match tried {
            Ok(Ok(p)) => return Ok((p.version, attempts)),
            Ok(Err(e)) if start.elapsed() < Duration::from_secs(60) => {
                note(&format!("publish attempt {attempts}: {e}"));
            }
            Err(_) if start.elapsed() < Duration::from_secs(60) => {
                note(&format!("publish attempt {attempts} hung for 20 s"));
            }
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => bail!("publishing hung"),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// What every worker answering the services API reports serving of `MODEL`: (id, version).
async fn worker_versions(nats: &async_nats::Client) -> Vec<(String, u64)> {
    use futures::StreamExt;
    let inbox = nats.new_inbox();
    let Ok(mut replies) = nats.subscribe(inbox.clone()).await else {
        return Vec::new();
    };
    if nats
        .publish_with_reply("$SRV.STATS.flotilla", inbox, "".into())
        .await
        .is_err()
    {
        return Vec::new();
    }
    let mut out = Vec::new();
    let gather = async {
        while let Some(m) = replies.next().await {
            let Ok(stats) = serde_json::from_slice::<serde_json::Value>(&m.payload) else {
                continue;
            };
            let id = stats["id"].as_str().unwrap_or("?").to_owned();
            let version = stats["endpoints"]
                .as_array()
                .and_then(|e| e.iter().find(|e| e["name"] == MODEL))
                .and_then(|e| e["data"]["version"].as_u64())
                .unwrap_or(0);
            out.push((id, version));
        }
    };
    let _ = tokio::time::timeout(Duration::from_millis(300), gather).await;
    out.sort();
    out
}

/// Time until both workers report serving `version` (and a prediction comes from it).
async fn served_by_all(client: &Client, version: u64, deadline: Duration) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < deadline {
        let seen = worker_versions(client.nats()).await;
        if seen.len() == 2 && seen.iter().all(|(_, v)| *v == version) {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

/// The server leading `stream`, asked for up to 20 s (there is none during an election).
async fn stream_leader(js: &async_nats::jetstream::Context, stream: &str) -> Option<String> {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        if let Ok(s) = js.get_stream(stream).await {
            if let Some(leader) = s
                .get_info()
                .await
                .ok()
                .and_then(|i| i.cluster)
                .and_then(|c| c.leader)
            {
                return Some(leader);
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    None
}

/// Time until both buckets' streams have a leader and every replica is current.
async fn rejoined(js: &async_nats::jetstream::Context, deadline: Duration) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < deadline {
        let mut ready = true;
        for name in ["KV_flotilla-manifests", "OBJ_flotilla-models"] {
            let info = match js.get_stream(name).await {
                Ok(s) => s.get_info().await.ok(),
                Err(_) => None,
            };
            let current = info
                .and_then(|i| i.cluster)
                .map(|c| {
                    c.leader.is_some()
                        && c.replicas.len() == 2
                        && c.replicas.iter().all(|p| p.current && !p.offline)
                })
                .unwrap_or(false);
            ready &= current;
        }
        if ready {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    None
}
