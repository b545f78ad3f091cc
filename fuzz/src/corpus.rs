//! The seed corpus: valid (and nearly valid) inputs of every form each target reads, kept
//! in `fuzz/corpus/<target>/` so a run is reproducible from the repository alone.
//! [`seeds`] builds them from the example models and the registry's own types; `flotilla-fuzz
//! write-corpus` writes them out.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use flotilla_model::ArtifactEncoding;
use flotilla_registry::manifest::{Manifest, Promote, VersionInfo};
use serde_json::{json, Value};

use crate::targets::Target;

/// `fuzz/corpus/`, next to this crate's manifest.
pub fn default_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus")
}

/// Every file of `dir/<target>/`, sorted by name.
pub fn load(dir: &Path, target: Target) -> anyhow::Result<Vec<Vec<u8>>> {
    let dir = dir.join(target.name());
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading the corpus {}", dir.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    paths.sort();
    let entries = paths
        .iter()
        .map(|p| std::fs::read(p).with_context(|| format!("reading {}", p.display())))
        .collect::<anyhow::Result<Vec<_>>>()?;
    anyhow::ensure!(!entries.is_empty(), "the corpus {} is empty", dir.display());
    Ok(entries)
}

/// The seeds of `target`, as (file name, bytes).
pub fn seeds(target: Target) -> Vec<(String, Vec<u8>)> {
    match target {
        Target::RequestJson => request_values()
            .into_iter()
            .map(|(name, v)| (format!("{name}.json"), serde_json::to_vec(&v).unwrap()))
            .chain(raw_json_requests())
            .collect(),
        Target::RequestMsgpack => request_values()
            .into_iter()
            .map(|(name, v)| {
                (
                    format!("{name}.msgpack"),
                    rmp_serde::to_vec_named(&v).unwrap(),
                )
            })
            .chain(raw_msgpack_requests())
            .collect(),
        Target::Artifact => artifacts(),
        Target::Manifest => manifests(),
    }
}

fn request_values() -> Vec<(&'static str, Value)> {
    let rows: Vec<Vec<f64>> = (0..20)
        .map(|r| (0..4).map(|c| (r * 4 + c) as f64 / 7.0 - 3.0).collect())
        .collect();
    vec![
        ("inputs-one-row", json!({"inputs": [[5.1, 3.5, 1.4, 0.2]]})),
        (
            "inputs-two-rows-id",
            json!({"inputs": [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]], "id": "a"}),
        ),
        ("inputs-twenty-rows", json!({"inputs": rows})),
        (
            "inputs-integers",
            json!({"inputs": [[1, -2, 3, 18446744073709551615u64]]}),
        ),
        ("x-single", json!({"x": [5.1, 3.5, 1.4, 0.2]})),
        (
            "x-with-id",
            json!({"id": "req-7", "x": [1e-300, -0.0, 1e300]}),
        ),
        (
            "unknown-keys",
            json!({"meta": {"a": [1, {"b": null}], "c": true}, "inputs": [[1.0]], "z": "s"}),
        ),
        ("one-value", json!({"inputs": [[0]]})),
        // Refusals, so mutants start on every error path too.
        ("both-forms", json!({"inputs": [[1]], "x": [1]})),
        ("empty-inputs", json!({"inputs": []})),
        ("ragged-rows", json!({"inputs": [[1, 2], [3]]})),
        ("string-value", json!({"inputs": [[1, "2"]]})),
        ("id-not-string", json!({"inputs": [[1]], "id": 5})),
        ("too-many-rows", json!({"inputs": vec![vec![1]; 1025]})),
        ("not-a-map", json!([[1, 2]])),
    ]
}

fn raw_json_requests() -> Vec<(String, Vec<u8>)> {
    [
        ("raw-whitespace", " \n{ \"inputs\" : [ [ 1 , 2e3 ] ] } \n"),
        ("raw-escapes", r#"{"id": "\u00e9\n\"", "x": [-1.5E-3]}"#),
        ("raw-trailing", r#"{"x": [1]} {"x": [2]}"#),
        ("raw-duplicate-keys", r#"{"x": [1], "x": [2, 3]}"#),
    ]
    .into_iter()
    .map(|(n, t)| (format!("{n}.json"), t.as_bytes().to_vec()))
    .collect()
}

fn raw_msgpack_requests() -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    // Issue 8, item 1: a map whose `inputs` claims four billion elements.
    let mut huge = vec![0x81, 0xa6];
    huge.extend_from_slice(b"inputs");
    huge.extend_from_slice(&[0xdd, 0xff, 0xff, 0xff, 0xff]);
    out.push(("raw-declared-huge".to_string(), huge));
    // Keys as bin, values as float32 and the long integer forms.
    let mut bin_keys = vec![0x81, 0xc4, 0x06];
    bin_keys.extend_from_slice(b"inputs");
    bin_keys.extend_from_slice(&[0x91, 0x93, 0xca, 0x3f, 0x80, 0x00, 0x00, 0xd3]);
    bin_keys.extend_from_slice(&(-5i64).to_be_bytes());
    bin_keys.extend_from_slice(&[0xcd, 0x01, 0x00]);
    out.push(("raw-bin-keys-f32".to_string(), bin_keys));
    // map16/array16/str8 headers.
    let mut long_forms = vec![0xde, 0x00, 0x01, 0xd9, 0x01, b'x', 0xdc, 0x00, 0x02];
    long_forms.extend_from_slice(&[0xcb]);
    long_forms.extend_from_slice(&1.5f64.to_be_bytes());
    long_forms.push(0x07);
    out.push(("raw-long-headers".to_string(), long_forms));
    out.into_iter()
        .map(|(n, b)| (format!("{n}.msgpack"), b))
        .collect()
}

fn example(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../models")
        .join(format!("{name}.json"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn artifacts() -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for name in ["iris", "linear", "mlp"] {
        let bytes = example(name);
        let artifact = flotilla_model::Artifact::from_bytes(&bytes).expect("example loads");
        out.push((format!("{name}.json"), bytes));
        out.push((
            format!("{name}.msgpack"),
            artifact.to_bytes(ArtifactEncoding::MsgPack),
        ));
    }
    let binary = json!({
        "format": "flotilla.model.v1", "inputs": 2, "outputs": 1,
        "labels": ["no", "yes"],
        "layers": [
            {"weights": [[0.5, -1, 2], [1, 0, -0.25]], "bias": [0, 0.1, 0], "activation": "tanh"},
            {"weights": [[1], [-1], [0.5]], "bias": [0.2], "activation": "sigmoid"}
        ],
        "metadata": {"metrics": {"accuracy": 0.9, "log_loss": 0.3}, "notes": [1, {"a": null}]},
        "from_a_newer_tool": {"k": [1, 2]}
    });
    let identity = json!({
        "format": "flotilla.model.v1", "inputs": 1, "outputs": 1,
        "layers": [{"weights": [[2]], "bias": [1], "activation": "identity"}]
    });
    let relu_indexed = json!({
        "format": "flotilla.model.v1", "inputs": 3, "outputs": 2,
        "scaler": {"mean": [0, 1, 2], "std": [1, 0.5, 4]},
        "layers": [
            {"weights": [[1, 0], [0, 1], [1, 1]], "bias": [0, 0], "activation": "relu"},
            {"weights": [[1, -1], [-1, 1]], "bias": [0, 0], "activation": "softmax"}
        ]
    });
    for (name, value) in [
        ("binary-labels", binary),
        ("identity", identity),
        ("relu-softmax", relu_indexed),
    ] {
        out.push((format!("{name}.json"), serde_json::to_vec(&value).unwrap()));
        out.push((
            format!("{name}.msgpack"),
            rmp_serde::to_vec_named(&value).unwrap(),
        ));
    }
    out
}

fn version(object: &str, accuracy: f64, signed: bool) -> VersionInfo {
    VersionInfo {
        kind: "dense".into(),
        object: object.into(),
        sha256: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08".into(),
        size: 818,
        signature: signed.then(|| "ab".repeat(64)),
        signer: signed.then(|| "cd".repeat(32)),
        metrics: BTreeMap::from([("accuracy".to_string(), accuracy)]),
        created: "2026-01-01T00:00:00Z".into(),
    }
}

/// Manifests as the registry writes them (compact JSON of [`Manifest`]), in the states an
/// operator can put one in.
fn manifests() -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut m = Manifest::new("iris");
    m.add_version(version("iris/AAAA", 0.9, false), Promote::IfBetter);
    out.push(("one-version".to_string(), m.clone()));
    m.add_version(version("iris/BBBB", 0.95, true), Promote::IfBetter);
    m.add_version(version("iris/CCCC", 0.5, true), Promote::Never);
    m.set_canary(3, 0.25).unwrap();
    out.push(("canary".to_string(), m.clone()));
    m.promote(3).unwrap();
    m.rollback(None).unwrap();
    out.push(("rolled-back".to_string(), m.clone()));
    // Every manifest is stored under the key the target reads it with.
    let mut r = Manifest::new("iris");
    let mut info = version("iris/DDDD", 0.0, false);
    info.metrics = BTreeMap::from([("r2".to_string(), 0.45), ("mse".to_string(), 3000.5)]);
    r.add_version(info, Promote::Always);
    out.push(("regressor".to_string(), r));
    let mut out: Vec<(String, Vec<u8>)> = out
        .into_iter()
        .map(|(n, m)| (format!("{n}.json"), serde_json::to_vec(&m).unwrap()))
        .collect();
    out.push((
        "no-current.json".into(),
        br#"{"model":"iris","current":null,"latest":0,"versions":{}}"#.to_vec(),
    ));
    out
}

/// Writes the seeds of every target under `dir`, replacing files of the same name.
pub fn write(dir: &Path) -> anyhow::Result<usize> {
    let mut n = 0;
    for target in Target::ALL {
        let sub = dir.join(target.name());
        std::fs::create_dir_all(&sub)?;
        for (name, bytes) in seeds(target) {
            std::fs::write(sub.join(&name), bytes)?;
            n += 1;
        }
    }
    Ok(n)
}
