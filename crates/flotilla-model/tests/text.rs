//! The text-embedding backend against sentence-transformers' own outputs: the shipped tiny
//! random BERTs (mean + Normalize, and CLS), the real all-MiniLM-L6-v2 (fetched by
//! `scripts/fetch_minilm.sh`, never skipped), and directories with a missing or inconsistent
//! file, each of which must be refused with an error naming the file and field.

use std::path::{Path, PathBuf};
use std::process::Command;

use flotilla_model::text::{Pooling, TextEncoder};
use flotilla_model::ModelError;
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use serde::Deserialize;

/// The bar the issue sets for every reference text.
const MIN_COSINE: f64 = 0.9999;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[derive(Deserialize)]
struct Fixture {
    model: String,
    max_seq_length: usize,
    pooling: String,
    normalize: bool,
    texts: Vec<Reference>,
}

#[derive(Deserialize)]
struct Reference {
    text: String,
    tokens: usize,
    input_ids: Vec<u32>,
    embedding: Vec<f32>,
}

fn fixture(name: &str) -> Fixture {
    let path = root().join("tests/fixtures").join(name);
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_slice(&bytes).unwrap()
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum();
    let na: f64 = a.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb).max(1e-30)
}

/// Checks the encoder's config, tokenization and vectors against a fixture: the texts one by
/// one, all in one batch, and the batch reversed (packing must not leak across texts). Returns
/// the worst cosine and the largest absolute difference, which the test prints.
fn check_against(encoder: &TextEncoder, fx: &Fixture) -> (f64, f32) {
    assert_eq!(encoder.max_seq_length(), fx.max_seq_length, "{}", fx.model);
    assert_eq!(encoder.normalize(), fx.normalize, "{}", fx.model);
    let pooling = match encoder.pooling() {
        Pooling::Mean => "mean",
        Pooling::Cls => "cls",
    };
    assert_eq!(pooling, fx.pooling, "{}", fx.model);
    for r in &fx.texts {
        let ids = encoder.tokenize(&r.text).unwrap();
        assert_eq!(ids, r.input_ids, "token ids of {:?}", r.text);
        assert_eq!(
            encoder.tokenize_len(&r.text).unwrap(),
            r.tokens,
            "{:?}",
            r.text
        );
        assert_eq!(r.embedding.len(), encoder.dim());
    }
    let texts: Vec<&str> = fx.texts.iter().map(|r| r.text.as_str()).collect();
    let reversed: Vec<&str> = texts.iter().rev().copied().collect();
    let batch = encoder.encode(&texts).unwrap();
    let backwards = encoder.encode(&reversed).unwrap();
    let (mut worst_cos, mut worst_diff) = (1.0f64, 0.0f32);
    for (i, r) in fx.texts.iter().enumerate() {
        let alone = encoder.encode(&[r.text.as_str()]).unwrap();
        assert_eq!(alone.tokens, vec![r.tokens]);
        assert_eq!(batch.tokens[i], r.tokens);
        let rows = [
            alone.vectors.row(0).to_vec(),
            batch.vectors.row(i).to_vec(),
            backwards.vectors.row(texts.len() - 1 - i).to_vec(),
        ];
        for got in &rows {
            let cos = cosine(got, &r.embedding);
            assert!(
                cos >= MIN_COSINE,
                "{}: cosine {cos} for {:?} ({} tokens)",
                fx.model,
                r.text,
                r.tokens
            );
            worst_cos = worst_cos.min(cos);
            for (a, b) in got.iter().zip(&r.embedding) {
                worst_diff = worst_diff.max((a - b).abs());
            }
        }
        if fx.normalize {
            let norm = rows[0]
                .iter()
                .map(|&x| (x as f64).powi(2))
                .sum::<f64>()
                .sqrt();
            assert!((norm - 1.0).abs() < 1e-5, "not unit length: {norm}");
        }
    }
    println!(
        "{}: {} texts, worst cosine {worst_cos:.7}, max |diff| {worst_diff:.2e}",
        fx.model,
        fx.texts.len()
    );
    (worst_cos, worst_diff)
}

#[test]
fn tiny_bert_mean_normalize_matches_sentence_transformers() {
    let encoder = TextEncoder::load(&root().join("models/tiny-bert")).unwrap();
    assert_eq!(encoder.dim(), 32);
    let (_, diff) = check_against(&encoder, &fixture("tiny_bert_embeddings.json"));
    assert!(diff < 1e-4, "max |diff| {diff}");
}

#[test]
fn tiny_bert_cls_matches_sentence_transformers() {
    let encoder = TextEncoder::load(&root().join("models/tiny-bert-cls")).unwrap();
    assert_eq!(encoder.pooling(), Pooling::Cls);
    assert!(!encoder.normalize());
    let (_, diff) = check_against(&encoder, &fixture("tiny_bert_cls_embeddings.json"));
    assert!(diff < 1e-4, "max |diff| {diff}");
}

#[test]
fn empty_and_over_long_texts_are_valid() {
    let encoder = TextEncoder::load(&root().join("models/tiny-bert")).unwrap();
    assert_eq!(encoder.tokenize("").unwrap().len(), 2, "[CLS] [SEP]");
    let long = "word ".repeat(500);
    assert_eq!(
        encoder.tokenize_len(&long).unwrap(),
        encoder.max_seq_length()
    );
    let out = encoder.encode(&["", &long, "   "]).unwrap();
    assert_eq!(out.tokens, vec![2, 32, 2]);
    assert!(out.vectors.iter().all(|v| v.is_finite()));
    let none = encoder.encode(&[]).unwrap();
    assert_eq!(none.vectors.dim(), (0, 32));
}

/// all-MiniLM-L6-v2 itself: every one of the 30 reference texts (English, accents, CJK,
/// Arabic, emoji, empty, whitespace, a text truncated at 256 tokens), ids, counts and vectors.
#[test]
fn minilm_matches_sentence_transformers() {
    let dir = root().join("models/minilm");
    let script = root().join("scripts/fetch_minilm.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg(&dir)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "{} failed ({}); the MiniLM test never skips:\nstdout:\n{}\nstderr:\n{}",
        script.display(),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let encoder = TextEncoder::load(&dir).unwrap();
    assert_eq!((encoder.dim(), encoder.max_seq_length()), (384, 256));
    let fx = fixture("minilm_embeddings.json");
    assert_eq!(fx.texts.len(), 30);
    assert!(
        fx.texts.iter().any(|r| r.tokens == 256),
        "the fixture has a truncated text"
    );
    check_against(&encoder, &fx);
}

// ---- Directories that must be refused ----

/// A writable copy of a shipped model directory.
fn copy_model(name: &str) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&root().join("models").join(name), tmp.path());
    tmp
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

fn load_err(dir: &Path) -> String {
    match TextEncoder::load(dir) {
        Ok(_) => panic!("{} loaded but should have been refused", dir.display()),
        Err(e) => e.to_string(),
    }
}

fn assert_mentions(err: &str, parts: &[&str]) {
    for p in parts {
        assert!(err.contains(p), "error {err:?} does not mention {p:?}");
    }
}

#[test]
fn each_missing_file_is_named() {
    for file in flotilla_model::text::FILES {
        let dir = copy_model("tiny-bert");
        std::fs::remove_file(dir.path().join(file)).unwrap();
        let err = TextEncoder::load(dir.path()).unwrap_err();
        assert!(matches!(err, ModelError::Io { .. }), "{file}: {err}");
        assert_mentions(&err.to_string(), &[file]);
    }
}

#[test]
fn a_truncated_safetensors_file_is_refused() {
    let dir = copy_model("tiny-bert");
    let path = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    for cut in [4, 100, bytes.len() / 2, bytes.len() - 1] {
        std::fs::write(&path, &bytes[..cut]).unwrap();
        assert_mentions(&load_err(dir.path()), &["model.safetensors"]);
    }
}

/// Rewrites the copy's model.safetensors with `edit` applied to its (name, dtype, shape, data)
/// list.
fn rewrite_tensors(dir: &Path, edit: impl FnOnce(&mut Vec<(String, Dtype, Vec<usize>, Vec<u8>)>)) {
    let path = dir.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let file = SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = file
        .iter()
        .map(|(n, v)| {
            (
                n.to_owned(),
                v.dtype(),
                v.shape().to_vec(),
                v.data().to_vec(),
            )
        })
        .collect();
    edit(&mut tensors);
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    std::fs::write(&path, safetensors::serialize(views, None).unwrap()).unwrap();
}

#[test]
fn a_tensor_of_the_wrong_shape_is_named_with_the_config_key() {
    let dir = copy_model("tiny-bert");
    let name = "encoder.layer.1.attention.self.query.weight";
    rewrite_tensors(dir.path(), |t| {
        let q = t.iter_mut().find(|(n, ..)| n == name).unwrap();
        q.2 = vec![32, 16];
        q.3.truncate(32 * 16 * 4);
    });
    let err = load_err(dir.path());
    assert_mentions(
        &err,
        &["model.safetensors", name, "[32, 16]", "hidden_size 32"],
    );
}

#[test]
fn a_missing_tensor_is_named() {
    let dir = copy_model("tiny-bert");
    let name = "encoder.layer.0.output.LayerNorm.bias";
    rewrite_tensors(dir.path(), |t| t.retain(|(n, ..)| n != name));
    assert_mentions(
        &load_err(dir.path()),
        &["model.safetensors", name, "missing"],
    );
}

#[test]
fn non_f32_weights_are_refused_but_int64_position_ids_are_skipped() {
    let original = std::fs::read(root().join("models/tiny-bert/model.safetensors")).unwrap();
    let file = SafeTensors::deserialize(&original).unwrap();
    assert_eq!(
        file.tensor("embeddings.position_ids").unwrap().dtype(),
        Dtype::I64,
        "the shipped model carries the int64 buffer real exports have"
    );
    let dir = copy_model("tiny-bert");
    let name = "embeddings.LayerNorm.weight";
    rewrite_tensors(dir.path(), |t| {
        let w = t.iter_mut().find(|(n, ..)| n == name).unwrap();
        w.1 = Dtype::F16;
        w.3.truncate(w.3.len() / 2);
    });
    assert_mentions(&load_err(dir.path()), &["model.safetensors", name, "F16"]);
}

#[test]
fn more_layers_than_the_config_says_is_refused() {
    let dir = copy_model("tiny-bert");
    let config = dir.path().join("config.json");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace("\"num_hidden_layers\": 2", "\"num_hidden_layers\": 1"),
    )
    .unwrap();
    assert_mentions(
        &load_err(dir.path()),
        &[
            "model.safetensors",
            "encoder.layer.1",
            "num_hidden_layers 1",
        ],
    );
}

#[test]
fn inconsistent_json_files_are_named() {
    let cases: [(&str, &str, &str, &[&str]); 6] = [
        (
            "config.json",
            "\"hidden_size\": 32",
            "\"hidden_size\": 48",
            &["word_embedding_dimension", "hidden_size 48"],
        ),
        (
            "config.json",
            "\"num_attention_heads\": 4",
            "\"num_attention_heads\": 5",
            &["config.json", "num_attention_heads"],
        ),
        (
            "config.json",
            "\"hidden_act\": \"gelu\"",
            "\"hidden_act\": \"relu\"",
            &["config.json", "hidden_act", "relu"],
        ),
        (
            "sentence_bert_config.json",
            "\"max_seq_length\": 32",
            "\"max_seq_length\": 65",
            &[
                "sentence_bert_config.json",
                "max_seq_length",
                "max_position_embeddings 64",
            ],
        ),
        (
            "1_Pooling/config.json",
            "\"word_embedding_dimension\": 32",
            "\"word_embedding_dimension\": 31",
            &["1_Pooling/config.json", "word_embedding_dimension"],
        ),
        (
            "1_Pooling/config.json",
            "\"pooling_mode_max_tokens\": false",
            "\"pooling_mode_max_tokens\": true",
            &["1_Pooling/config.json", "pooling_mode_max_tokens"],
        ),
    ];
    for (file, from, to, parts) in cases {
        let dir = copy_model("tiny-bert");
        let path = dir.path().join(file);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(from), "{file} has {from}");
        std::fs::write(&path, text.replace(from, to)).unwrap();
        assert_mentions(&load_err(dir.path()), parts);
    }
    let dir = copy_model("tiny-bert");
    std::fs::write(dir.path().join("config.json"), "{\"hidden_size\": 32}").unwrap();
    assert_mentions(&load_err(dir.path()), &["config.json", "missing field"]);
}

#[test]
fn a_broken_tokenizer_is_named() {
    let dir = copy_model("tiny-bert");
    std::fs::write(dir.path().join("tokenizer.json"), "{\"version\": \"1.0\"}").unwrap();
    assert_mentions(&load_err(dir.path()), &["tokenizer.json"]);
}

/// A worker shares one encoder between batches behind an `Arc` and encodes on a rayon pool.
#[test]
fn an_encoder_is_shared_across_threads() {
    fn shareable<T: Send + Sync>() {}
    shareable::<TextEncoder>();
    let encoder = std::sync::Arc::new(TextEncoder::load(&root().join("models/tiny-bert")).unwrap());
    let expected = encoder.encode(&["hello world"]).unwrap();
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let encoder = encoder.clone();
            std::thread::spawn(move || encoder.encode(&["hello world"]).unwrap())
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap(), expected);
    }
}

/// GEMMs are split by rows (many tokens) or by columns (few), attention and GELU run in
/// parallel for large batches: whatever the pool size, the vectors are what one thread computes.
#[test]
fn results_do_not_depend_on_the_pool_size() {
    let encoder = TextEncoder::load(&root().join("models/tiny-bert")).unwrap();
    let fx = fixture("tiny_bert_embeddings.json");
    let texts: Vec<&str> = fx
        .texts
        .iter()
        .map(|r| r.text.as_str())
        .cycle()
        .take(100)
        .collect();
    let on = |threads: usize, texts: &[&str]| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| encoder.encode(texts).unwrap())
    };
    for batch in [&texts[..1], &texts[..5], &texts[..]] {
        let one = on(1, batch);
        for threads in [2, 3, 5] {
            let many = on(threads, batch);
            assert_eq!(many.tokens, one.tokens);
            let diff = (&many.vectors - &one.vectors)
                .mapv(f32::abs)
                .fold(0f32, |m, &v| m.max(v));
            assert!(
                diff < 1e-5,
                "{threads} threads, {} texts: max |diff| {diff}",
                batch.len()
            );
        }
    }
}

#[test]
fn the_kind_is_named_as_the_protocol_says() {
    use flotilla_model::Kind;
    assert_eq!(Kind::TextEmbedding.as_str(), "text-embedding");
    assert_eq!(
        serde_json::to_string(&Kind::TextEmbedding).unwrap(),
        "\"text-embedding\""
    );
    let kind: Kind = serde_json::from_str("\"text-embedding\"").unwrap();
    assert_eq!(kind, Kind::TextEmbedding);
}
