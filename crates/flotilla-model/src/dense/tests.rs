use super::*;
use crate::Model;
use ndarray::array;

fn iris_json() -> String {
    r#"{"format": "flotilla.model.v1", "inputs": 2, "outputs": 3,
        "scaler": {"mean": [1.0, 2.0], "std": [2.0, 4.0]},
        "labels": ["a", "b", "c"],
        "layers": [{"weights": [[1, 0, -1], [0, 1, 1]], "bias": [0, 0.5, 0], "activation": "softmax"}],
        "future_key": 7}"#
        .to_owned()
}

#[test]
fn forward_matches_the_formula() {
    let m = Model::from_bytes(iris_json().as_bytes()).unwrap();
    let out = m.forward(array![[3.0, 6.0]].view());
    // h0 = [1, 1]; z = [1, 1.5, 0]
    let z = [1.0f64, 1.5, 0.0];
    let sum: f64 = z.iter().map(|v| v.exp()).sum();
    for (j, zj) in z.iter().enumerate() {
        assert_close(out[[0, j]], zj.exp() / sum);
    }
    assert_eq!(
        m.label(out.row(0).as_slice().unwrap()),
        Some(Label::Name("b".into()))
    );
    let artifact = Artifact::from_bytes(iris_json().as_bytes()).unwrap();
    assert_eq!(artifact.extra["future_key"], 7);
}

/// The layers compute in f32: a few f32 ulps (6e-8 each) from the exact value. 1e-5
/// relative is the promise, with a floor for values near zero, whose error scales with
/// the terms summed rather than with the result: here terms of order one, so about 1e-7
/// each (an identity output of -0.00198 came out 1.3e-7 off).
fn assert_close(got: f64, want: f64) {
    assert!(
        (got - want).abs() <= 1e-5 * want.abs() + 1e-6,
        "{got} vs {want}"
    );
}

/// An MLP with a scaler whose means are timestamps (1.7e9, spread 1e4), checked against
/// the same layers in f64. Rounding such inputs to f32 before the scaler would move them
/// by up to 64, i.e. 0.006 standard deviations: the scaler has to run in f64.
#[test]
fn f32_outputs_are_within_1e5_of_the_f64_reference() {
    let artifact = Artifact {
        format: FORMAT_V1.into(),
        inputs: 3,
        outputs: 2,
        scaler: Some(Scaler {
            mean: vec![1.7e9, -3.0, 0.5],
            std: vec![1e4, 2.0, 0.25],
        }),
        labels: None,
        layers: vec![
            LayerSpec {
                weights: vec![
                    vec![0.3, -0.7, 1.1, 0.2],
                    vec![-0.4, 0.9, 0.05, -1.3],
                    vec![0.8, 0.1, -0.6, 0.45],
                ],
                bias: vec![0.1, -0.2, 0.0, 0.3],
                activation: "tanh".into(),
            },
            LayerSpec {
                weights: vec![
                    vec![1.5, -0.5],
                    vec![-2.0, 0.7],
                    vec![0.25, 1.2],
                    vec![0.9, -1.1],
                ],
                bias: vec![0.05, -0.05],
                activation: "identity".into(),
            },
        ],
        metadata: None,
        extra: Default::default(),
    };
    let model = Dense::from_artifact(&artifact).unwrap();
    let x = Array2::from_shape_fn((200, 3), |(r, c)| {
        let u = ((r * 37 + c * 11) % 101) as f64 / 50.0 - 1.0;
        [1.7e9 + 2e4 * u, -3.0 + 4.0 * u, 0.5 + 0.5 * u][c]
    });
    let wide: Vec<Layer<f64>> = artifact
        .layers
        .iter()
        .map(|l| Layer {
            weights: Array2::from_shape_fn((l.weights.len(), l.bias.len()), |(i, j)| {
                l.weights[i][j]
            }),
            bias: Array1::from(l.bias.clone()),
            activation: Activation::parse(&l.activation).unwrap(),
        })
        .collect();
    let scaler = artifact.scaler.as_ref().unwrap();
    let mean = Array1::from(scaler.mean.clone());
    let std = Array1::from(scaler.std.clone());
    let mut want = (&x - &mean) / &std;
    for layer in &wide {
        want = layer.forward(want.view());
    }
    let got = model.forward(x.view());
    for (g, w) in got.iter().zip(&want) {
        assert_close(*g as f64, *w);
    }
}

#[test]
fn weights_beyond_the_f32_range_are_refused() {
    let text = iris_json().replace("[0, 1, 1]", "[0, 1e39, 1]");
    let err = Model::from_bytes(text.as_bytes()).unwrap_err().to_string();
    assert!(err.contains("layers[0].weights[1][1]"), "{err}");
    assert!(err.contains("f32 range"), "{err}");
}

#[test]
fn split_batches_equal_one_piece() {
    let artifact = Artifact::from_bytes(iris_json().as_bytes()).unwrap();
    let m = Dense::from_artifact(&artifact).unwrap();
    let x = Array2::from_shape_fn((1000, 2), |(r, c)| (r * 7 + c * 3) as f64 % 11.0);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(4)
        .build()
        .unwrap();
    let split = pool.install(|| m.forward(x.view()));
    let whole = m.forward_chunk(x.view());
    assert_eq!(split, whole);
}

#[test]
fn validation_names_the_field() {
    let cases = [
        (
            r#""format": "flotilla.model.v1""#,
            r#""format": "v9""#,
            "format",
        ),
        (
            r#""std": [2.0, 4.0]"#,
            r#""std": [2.0, 0.0]"#,
            "scaler.std[1]",
        ),
        (
            r#"[[1, 0, -1], [0, 1, 1]]"#,
            r#"[[1, 0, -1], [0, 1]]"#,
            "layers[0].weights[1]",
        ),
        (
            r#""activation": "softmax""#,
            r#""activation": "gelu""#,
            "layers[0].activation",
        ),
        (r#""outputs": 3"#, r#""outputs": 4"#, "outputs"),
        (r#""mean": [1.0, 2.0]"#, r#""mean": [1.0]"#, "scaler.mean"),
        (
            r#""bias": [0, 0.5, 0]"#,
            r#""bias": [0, 0.5, 1e999]"#,
            "invalid JSON",
        ),
    ];
    for (from, to, field) in cases {
        let text = iris_json().replace(from, to);
        assert_ne!(text, iris_json(), "{from} not found");
        let err = Model::from_bytes(text.as_bytes()).unwrap_err().to_string();
        assert!(err.contains(field), "{field}: {err}");
    }
}

/// Issue 8, item 13: softmax over one unit always gives 1.0.
#[test]
fn softmax_over_one_unit_is_refused() {
    let text = r#"{"format": "flotilla.model.v1", "inputs": 2, "outputs": 1,
        "layers": [{"weights": [[1], [0]], "bias": [0], "activation": "softmax"}]}"#;
    let err = Model::from_bytes(text.as_bytes()).unwrap_err().to_string();
    assert!(err.contains("layers[0].activation"), "{err}");
    assert!(err.contains("softmax over one unit"), "{err}");
    let ok = text.replace("softmax", "sigmoid");
    assert!(Model::from_bytes(ok.as_bytes()).is_ok());
}

/// Found while triaging `scripts/fuzz.sh`'s memory findings: empty weight rows and as
/// many biases made validation reserve `width * units` values before checking a row.
/// Here, 500 kB of JSON asked for 80 GB and aborted the process ("memory allocation of
/// 80000000000 bytes failed"); `tests/fuzz.rs` checks the heap it takes, too.
#[test]
fn empty_rows_reserve_nothing() {
    let n = 100_000;
    let text = format!(
        r#"{{"format": "flotilla.model.v1", "inputs": {n}, "outputs": {n},
            "layers": [{{"weights": [{}], "bias": [{}], "activation": "identity"}}]}}"#,
        vec!["[]"; n].join(","),
        vec!["0"; n].join(",")
    );
    let err = Model::from_bytes(text.as_bytes()).unwrap_err().to_string();
    assert!(err.contains("layers[0].weights[0]"), "{err}");
}

/// Found by `scripts/fuzz.sh` (artifact): MessagePack arrays nested a thousand deep, each
/// claiming 32,000 elements, reserved about 1 MiB per level while buffering.
#[test]
fn deep_msgpack_is_refused_before_it_reserves() {
    let mut bytes =
        rmp_serde::to_vec_named(&Artifact::from_bytes(iris_json().as_bytes()).unwrap()).unwrap();
    // A new top-level key whose value nests 1,000 array16 headers of 32,119 elements.
    bytes[0] += 1;
    bytes.extend_from_slice(&[0xa1, b'z']);
    for _ in 0..1000 {
        bytes.extend_from_slice(&[0xdc, 0x7d, 0x77]);
    }
    let err = Model::from_bytes(&bytes).unwrap_err().to_string();
    assert!(err.contains("depth"), "{err}");
}

#[test]
fn msgpack_round_trip() {
    let a = Artifact::from_bytes(iris_json().as_bytes()).unwrap();
    let bytes = a.to_bytes(ArtifactEncoding::MsgPack);
    assert_eq!(Artifact::from_bytes(&bytes).unwrap(), a);
}

/// A model of zeros with these layer widths (inputs first), no scaler.
fn widths(sizes: &[usize]) -> Dense {
    let layers: Vec<_> = sizes
        .windows(2)
        .map(|w| {
            serde_json::json!({
                "weights": vec![vec![0.0; w[1]]; w[0]],
                "bias": vec![0.0; w[1]],
                "activation": "identity",
            })
        })
        .collect();
    let artifact = serde_json::json!({
        "format": "flotilla.model.v1",
        "inputs": sizes[0],
        "outputs": sizes[sizes.len() - 1],
        "layers": layers,
    });
    Dense::from_artifact(&Artifact::from_bytes(artifact.to_string().as_bytes()).unwrap()).unwrap()
}

/// A batch may be computed where it forms only while its multiply-adds stay within the
/// budget, and never when the pool would split it.
#[test]
fn inline_rows_follow_the_multiply_adds_per_row() {
    let iris = Dense::from_artifact(&Artifact::from_bytes(iris_json().as_bytes()).unwrap());
    // 6 weights, 3 biases, 4 for the scaler: 13 per row; capped at the pool's split.
    assert_eq!(iris.unwrap().inline_rows(), ROWS_PER_TASK);
    // 1,000 weights and 8 biases per row.
    assert_eq!(
        widths(&[125, 8]).inline_rows(),
        INLINE_MULTIPLY_ADDS / 1_008
    );
    // The benchmarks' 64-256-256-10 MLP: 84,234 per row, never inline.
    assert_eq!(widths(&[64, 256, 256, 10]).inline_rows(), 0);
}
