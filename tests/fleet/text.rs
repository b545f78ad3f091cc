//! Text-embedding models as a service: sentence-transformers directories served over NATS,
//! checked against sentence-transformers' own vectors (committed fixtures) with every text a
//! concurrent request of its own; the real all-MiniLM-L6-v2; published to the registry as one
//! archive, followed, hot-swapped, and a broken version refused while the old one serves; and
//! the bad inputs a text model must refuse by name.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use flotilla_model::{Kind, Model};
use flotilla_registry::{Promote, Registry, RegistryConfig};
use futures::future::join_all;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::support::*;

/// The bar the issue sets for every reference text.
const MIN_COSINE: f64 = 0.9999;

#[derive(Deserialize)]
struct Fixture {
    texts: Vec<Reference>,
}

#[derive(Deserialize)]
struct Reference {
    text: String,
    tokens: usize,
    embedding: Vec<f32>,
}

fn fixture(name: &str) -> Fixture {
    let bytes = std::fs::read(repo_path(&format!("tests/fixtures/{name}"))).unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

fn cosine(a: &[f64], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "vector lengths");
    let dot: f64 = a.iter().zip(b).map(|(&x, &y)| x * y as f64).sum();
    let na: f64 = a.iter().map(|x| x * x).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb).max(1e-30)
}

fn vector(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a vector: {v}"))
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

/// Sends every fixture text as its own request, all at once (they batch together in the
/// worker), and checks each reply's vector and token count against the reference.
async fn each_text_gets_its_own_vector(nats: &async_nats::Client, model: &str, fx: &Fixture) {
    let replies = join_all(fx.texts.iter().map(|r| {
        let body = json!({"x": r.text, "id": r.text}).to_string();
        async move { request(nats, model, &[("Flotilla-Timeout-Ms", "60000")], body).await }
    }))
    .await;
    for (r, reply) in fx.texts.iter().zip(replies) {
        let v = reply.json();
        assert_eq!(reply.error_code(), None, "{:?}: {v}", r.text);
        assert_eq!(v["id"], json!(r.text), "a reply reached the wrong caller");
        assert_eq!(v["tokens"], json!([r.tokens]), "{:?}", r.text);
        let got = vector(&v["y_pred"]);
        assert_eq!(vector(&v["outputs"][0]), got);
        let c = cosine(&got, &r.embedding);
        assert!(c >= MIN_COSINE, "{:?}: cosine {c}", r.text);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_directory_is_served_and_matches_sentence_transformers_text_by_text() {
    let server = server();
    let model = Model::load(&repo_path("models/tiny-bert")).unwrap();
    assert_eq!(model.kind(), Kind::TextEmbedding);
    let mut cfg = config(&server);
    // Small batches by tokens, so the concurrent texts form several batches.
    cfg.max_batch_tokens = 64;
    let worker = Worker::start(cfg, vec![("tiny", model)]).await;
    let nats = connect(&server).await;
    let fx = fixture("tiny_bert_embeddings.json");
    each_text_gets_its_own_vector(&nats, "tiny", &fx).await;

    // Many texts in one request: one vector and one token count each, in order.
    let texts: Vec<&str> = fx.texts.iter().map(|r| r.text.as_str()).collect();
    let reply = request(&nats, "tiny", &[], json!({"inputs": texts}).to_string()).await;
    let v = reply.json();
    assert_eq!(reply.error_code(), None, "{v}");
    let outputs = v["outputs"].as_array().unwrap();
    assert_eq!(outputs.len(), fx.texts.len());
    for (r, (out, tokens)) in fx
        .texts
        .iter()
        .zip(outputs.iter().zip(v["tokens"].as_array().unwrap()))
    {
        assert_eq!(tokens.as_u64(), Some(r.tokens as u64), "{:?}", r.text);
        assert!(
            cosine(&vector(out), &r.embedding) >= MIN_COSINE,
            "{:?}",
            r.text
        );
    }
    assert!(worker.metric("flotilla_batch_rows_count{model=\"tiny\"}") >= 2.0);

    // Discovery describes it without calling it: strings in, 32 f32 out per text.
    let info = nats.request("$SRV.INFO.flotilla", "".into()).await.unwrap();
    let info: Value = serde_json::from_slice(&info.payload).unwrap();
    let meta = &info["endpoints"][0]["metadata"];
    assert_eq!(meta["kind"], "text-embedding", "{info}");
    assert_eq!(meta["dtype"], "string");
    assert_eq!(meta["input_shape"], "[-1]");
    assert_eq!(meta["output_shape"], "[-1,32]");
    assert_eq!(meta["output_dtype"], "f32");
    worker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn minilm_served_over_nats_matches_sentence_transformers() {
    let dir = repo_path("models/minilm");
    let script = repo_path("scripts/fetch_minilm.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{} failed; the MiniLM test never skips:\n{}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let server = server();
    let model = tokio::task::spawn_blocking(move || Model::load(&dir).unwrap())
        .await
        .unwrap();
    let worker = Worker::start(config(&server), vec![("minilm", model)]).await;
    let nats = connect(&server).await;
    each_text_gets_its_own_vector(&nats, "minilm", &fixture("minilm_embeddings.json")).await;
    worker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_text_model_refuses_what_is_not_text_by_name() {
    let server = server();
    let model = Model::load(&repo_path("models/tiny-bert")).unwrap();
    let mut cfg = config(&server);
    cfg.max_request_rows = 4;
    cfg.max_queue_tokens = 40;
    let worker = Worker::start(cfg, vec![("tiny", model)]).await;
    let nats = connect(&server).await;
    let long = "word ".repeat(30);
    for (body, code, want) in [
        (json!({"inputs": [[1.0, 2.0]]}), 400, "is a text model"),
        (json!({"x": 3.5}), 400, "is a text model"),
        (json!({"inputs": ["fine", 1]}), 400, "inputs[1]"),
        (
            json!({"inputs": ["a", "b", "c", "d", "e"]}),
            413,
            "at most 4",
        ),
        (json!({"inputs": [long, long]}), 413, "max_queue_tokens 40"),
        (
            json!({"inputs": {"input": [long, long]}}),
            413,
            "max_queue_tokens 40",
        ),
    ] {
        let reply = request(&nats, "tiny", &[], body.to_string()).await;
        assert_eq!(reply.error_code(), Some(code), "{body}: {:?}", reply.json());
        let message = reply.json()["error"]["message"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(message.contains(want), "{body}: {message}");
    }
    // None of that disturbed the model: a text still gets its vector.
    let reply = request(&nats, "tiny", &[], json!({"x": "still fine"}).to_string()).await;
    assert_eq!(reply.error_code(), None, "{:?}", reply.json());
    worker.stop().await.unwrap();
}

async fn registry(server: &NatsServer) -> Registry {
    Registry::open(connect(server).await, &RegistryConfig::default())
        .await
        .unwrap()
}

async fn publish_archive(registry: &Registry, archive: &[u8]) -> u64 {
    registry
        .publish_kind(
            "embed",
            Kind::TextEmbedding.as_str(),
            archive,
            BTreeMap::new(),
            None,
            Promote::Always,
        )
        .await
        .unwrap()
        .version
}

/// The version and the vector of one text.
async fn embed(nats: &async_nats::Client, text: &str) -> (u64, Vec<f64>) {
    let reply = request(nats, "embed", &[], json!({"x": text}).to_string()).await;
    let v = reply.json();
    assert_eq!(reply.error_code(), None, "{v}");
    (v["version"].as_u64().unwrap(), vector(&v["y_pred"]))
}

#[tokio::test(flavor = "multi_thread")]
async fn directories_go_through_the_registry_and_swap_and_a_broken_one_is_refused() {
    let server = server();
    let registry = registry(&server).await;
    let mean = flotilla_model::pack_dir(&repo_path("models/tiny-bert")).unwrap();
    assert_eq!(
        mean,
        flotilla_model::pack_dir(&repo_path("models/tiny-bert")).unwrap(),
        "packing is deterministic, so the checksum covers the files and nothing else"
    );
    publish_archive(&registry, &mean).await;
    let worker = Worker::follow(config(&server), "embed").await;
    let nats = connect(&server).await;
    let (mean_fx, cls_fx) = (
        fixture("tiny_bert_embeddings.json"),
        fixture("tiny_bert_cls_embeddings.json"),
    );
    let text = &cls_fx.texts[1];
    let (version, v) = embed(&nats, &text.text).await;
    assert_eq!(version, 1);
    let want = mean_fx.texts.iter().find(|r| r.text == text.text).unwrap();
    assert!(cosine(&v, &want.embedding) >= MIN_COSINE);

    // A version of another pooling swaps in; requests keep being answered meanwhile.
    let cls = flotilla_model::pack_dir(&repo_path("models/tiny-bert-cls")).unwrap();
    let published = publish_archive(&registry, &cls).await;
    tokio::time::timeout(WAIT, async {
        loop {
            let (version, v) = embed(&nats, &text.text).await;
            if version == published {
                assert!(cosine(&v, &text.embedding) >= MIN_COSINE);
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the CLS version never served");

    // A directory without its tokenizer: refused at publish by the check every publisher
    // makes, and, stored anyway, refused by the worker while the CLS version keeps serving.
    let broken = tempfile::tempdir().unwrap();
    copy_dir(&repo_path("models/tiny-bert"), broken.path());
    let names: Vec<String> = ["config.json", "sentence_bert_config.json", "modules.json"]
        .into_iter()
        .chain(["1_Pooling/config.json", "model.safetensors"])
        .map(String::from)
        .collect();
    let archive = flotilla_model::text::files::pack(broken.path(), &names).unwrap();
    let err = flotilla_model::publishable_kind(Kind::TextEmbedding, &archive).unwrap_err();
    assert!(err.to_string().contains("tokenizer.json"), "{err}");
    let failed = "flotilla_model_load_failures_total{model=\"embed\",reason=\"invalid\"} 1";
    publish_archive(&registry, &archive).await;
    tokio::time::timeout(WAIT, async {
        while !worker.metrics.render().contains(failed) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the broken version was never refused");
    assert_eq!(embed(&nats, &text.text).await.0, published);
    worker.stop().await.unwrap();
}

fn copy_dir(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(&target).unwrap();
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}
