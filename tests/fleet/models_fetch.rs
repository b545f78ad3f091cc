//! `flotilla models fetch` and the progress of large transfers, as an operator runs them: the
//! real binary against a per-test nats-server. A text model published from its directory comes
//! back file for file; a download is verified as a worker verifies it (checksum, signature)
//! and a refused one writes nothing; a large artifact reports progress on stderr while
//! `--json` keeps stdout one JSON document.

use flotilla_model::{Kind, Model};
use flotilla_registry::{Registry, RegistryConfig};
use serde_json::{json, Value};

use crate::models_cli::*;
use crate::support::*;

/// The files a text model's archive holds: what the encoder reads, nothing else.
const TEXT_FILES: [&str; 6] = [
    "1_Pooling/config.json",
    "config.json",
    "model.safetensors",
    "modules.json",
    "sentence_bert_config.json",
    "tokenizer.json",
];

/// Every regular file under `dir`, relative, sorted.
fn files_under(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_dir() {
                stack.push(entry.path());
            } else {
                let rel = entry.path().strip_prefix(dir).unwrap().to_owned();
                out.push(rel.to_str().unwrap().replace('\\', "/"));
            }
        }
    }
    out.sort();
    out
}

#[tokio::test]
async fn a_published_text_model_comes_back_file_for_file() {
    let server = server();
    let models = Models::new(&server);
    let source = repo_path("models/tiny-bert");
    let args = ["publish", "tiny", path(&source), "--json"];
    let out = models.run(&args).await;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let published: Value = serde_json::from_str(&succeeded(&args, out)).unwrap();
    assert_eq!(published["version"], 1);
    assert!(
        !stderr.contains("uploading"),
        "a small artifact in a pipe shows no progress: {stderr}"
    );

    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("tiny");
    let v = models
        .json(&["fetch", "tiny", "--out", path(&target)])
        .await;
    assert_eq!(v["version"], 1, "{v}");
    assert_eq!(v["kind"], "text-embedding");
    assert_eq!(v["sha256"], published["sha256"]);
    assert_eq!(v["signature_verified"], false);
    assert_eq!(v["files"], json!(TEXT_FILES));
    assert_eq!(files_under(&target), TEXT_FILES, "the archive's files only");
    for name in TEXT_FILES {
        assert!(
            std::fs::read(source.join(name)).unwrap() == std::fs::read(target.join(name)).unwrap(),
            "{name} differs from the published directory's"
        );
    }
    let loaded = Model::load(&target).unwrap();
    assert_eq!(loaded.kind(), Kind::TextEmbedding);

    let stderr = models
        .fails(&["fetch", "tiny", "--out", path(&target)])
        .await;
    assert!(stderr.contains("refusing to overwrite"), "{stderr}");
    assert_eq!(files_under(&target), TEXT_FILES);

    // An existing empty directory is filled; an unknown version is named and writes nothing.
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let stdout = models
        .ok(&["fetch", "tiny", "--version", "1", "--out", path(&empty)])
        .await;
    assert!(
        stdout.contains("version 1") && stdout.contains("6 files unpacked into"),
        "{stdout}"
    );
    assert_eq!(files_under(&empty), TEXT_FILES);
    let missing = dir.path().join("v3");
    let stderr = models
        .fails(&["fetch", "tiny", "--version", "3", "--out", path(&missing)])
        .await;
    assert!(
        stderr.contains("no version 3") && stderr.contains("it has 1"),
        "{stderr}"
    );
    assert!(!missing.exists());
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        leftovers.len(),
        2,
        "no staging directory left: {leftovers:?}"
    );
}

#[tokio::test]
async fn fetch_verifies_checksum_and_signature_as_a_worker_does() {
    let server = server();
    let models = Models::new(&server);
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    for name in ["ops", "other"] {
        let args = ["models", "keygen", "--out", path(&keys), "--name", name];
        succeeded(&args, flotilla(&args).await);
    }
    let (key, public, other) = (
        keys.join("ops.key"),
        keys.join("ops.pub"),
        keys.join("other.pub"),
    );
    let iris = iris();
    models
        .ok(&["publish", "iris", &iris, "--signing-key", path(&key)])
        .await;
    models
        .ok(&["publish", "iris", &iris, "--promote", "never"])
        .await;

    // The signed version, with its key trusted: verified, and what the registry stores (dense
    // artifacts are stored as MessagePack), which a worker loads.
    let signed = dir.path().join("iris.msgpack");
    let v = models
        .json(&[
            "fetch",
            "iris",
            "--out",
            path(&signed),
            "--trusted-key",
            path(&public),
        ])
        .await;
    assert_eq!(
        (v["version"].as_u64(), v["kind"].as_str()),
        (Some(1), Some("dense"))
    );
    assert_eq!(v["signature_verified"], true);
    assert_eq!(
        v["signer"].as_str().unwrap(),
        std::fs::read_to_string(&public).unwrap().trim()
    );
    let canonical = flotilla_model::publishable(&std::fs::read(&iris).unwrap()).unwrap();
    assert!(std::fs::read(&signed).unwrap() == canonical.bytes);
    assert_eq!(Model::load(&signed).unwrap().inputs(), 4);

    // Another trusted key, or an unsigned version with a key trusted: refused, nothing written.
    let refused = dir.path().join("refused.msgpack");
    for (version, trusted, want) in [
        ("1", &other, "no trusted key made"),
        ("2", &public, "is unsigned"),
    ] {
        let stderr = models
            .fails(&[
                "fetch",
                "iris",
                "--version",
                version,
                "--out",
                path(&refused),
                "--trusted-key",
                path(trusted),
            ])
            .await;
        assert!(stderr.contains(want), "{stderr}");
        assert!(!refused.exists());
    }

    // A stored object changed behind the manifest's back (same size): the checksum catches it.
    let registry = Registry::open(connect(&server).await, &RegistryConfig::default())
        .await
        .unwrap();
    let (manifest, _) = registry.require("iris").await.unwrap();
    let info = &manifest.versions[&2];
    let mut bytes = registry.load("iris", 2, info, &[]).await.unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    registry
        .objects()
        .put(info.object.as_str(), &mut &bytes[..])
        .await
        .unwrap();
    let stderr = models
        .fails(&["fetch", "iris", "--version", "2", "--out", path(&refused)])
        .await;
    assert!(stderr.contains("checksum mismatch"), "{stderr}");
    assert!(!refused.exists());
}

/// A dense artifact stored as at least 8 MiB (1000 x 1000 weights as MessagePack f64).
fn large_artifact() -> Value {
    let weights: Vec<Vec<f64>> = (0..1000)
        .map(|i| (0..1000).map(|j| ((i * 7 + j) % 10) as f64 / 8.0).collect())
        .collect();
    json!({
        "format": "flotilla.model.v1",
        "inputs": 1000,
        "outputs": 1000,
        "layers": [{"weights": weights, "bias": vec![0.0; 1000], "activation": "identity"}],
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn a_large_artifact_shows_progress_on_stderr_and_json_stays_clean() {
    let server = server();
    let models = Models::new(&server);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("big.json");
    std::fs::write(&file, large_artifact().to_string()).unwrap();
    let canonical = flotilla_model::publishable(&std::fs::read(&file).unwrap()).unwrap();
    assert!(
        canonical.bytes.len() >= 8 << 20,
        "{}",
        canonical.bytes.len()
    );

    let args = ["publish", "big", path(&file), "--json"];
    let out = models.run(&args).await;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let stdout = succeeded(&args, out);
    let v: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("publish --json is not one JSON document ({e}): {stdout}"));
    assert_eq!(v["version"], 1);
    let tenths: Vec<&str> = stderr
        .lines()
        .map(|l| {
            l.strip_prefix("uploading big: ")
                .unwrap_or_else(|| panic!("{l:?}"))
        })
        .map(|l| l.split_once('%').unwrap().0)
        .collect();
    assert_eq!(
        tenths,
        ["10", "20", "30", "40", "50", "60", "70", "80", "90", "100"],
        "{stderr}"
    );

    let fetched = dir.path().join("big.msgpack");
    let args = ["fetch", "big", "--out", path(&fetched), "--json"];
    let out = models.run(&args).await;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let stdout = succeeded(&args, out);
    let v: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("fetch --json is not one JSON document ({e}): {stdout}"));
    assert_eq!(v["size"].as_u64(), Some(canonical.bytes.len() as u64));
    assert!(
        stderr.contains("downloading big: 50%") && stderr.contains("downloading big: 100%"),
        "{stderr}"
    );
    assert!(std::fs::read(&fetched).unwrap() == canonical.bytes);
}
