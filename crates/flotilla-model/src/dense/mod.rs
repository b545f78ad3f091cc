//! The dense kind: the `flotilla.model.v1` artifact (a stack of dense layers with an optional
//! input scaler), its validation, and its forward pass on ndarray. Large batches are split by
//! rows across the current rayon pool.

mod artifact;

use ndarray::{s, Array1, Array2, ArrayView2, Axis};
use rayon::prelude::*;

pub use artifact::{Artifact, ArtifactEncoding, LayerSpec, Scaler, FORMAT_V1};

use crate::{
    invalid, Backend, ComputeError, Computed, DType, Data, Kind, Label, ModelError, Signature,
    Tensor, TensorSpec, ROWS_PER_TASK,
};

/// The five activations of the format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    Identity,
    Relu,
    Tanh,
    Sigmoid,
    Softmax,
}

impl Activation {
    pub fn parse(name: &str) -> Option<Activation> {
        Some(match name {
            "identity" => Activation::Identity,
            "relu" => Activation::Relu,
            "tanh" => Activation::Tanh,
            "sigmoid" => Activation::Sigmoid,
            "softmax" => Activation::Softmax,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Activation::Identity => "identity",
            Activation::Relu => "relu",
            Activation::Tanh => "tanh",
            Activation::Sigmoid => "sigmoid",
            Activation::Softmax => "softmax",
        }
    }

    /// Applies the activation to each row of `h` in place.
    pub fn apply(self, h: &mut Array2<f64>) {
        match self {
            Activation::Identity => {}
            Activation::Relu => h.mapv_inplace(|v| v.max(0.0)),
            Activation::Tanh => h.mapv_inplace(f64::tanh),
            Activation::Sigmoid => h.mapv_inplace(sigmoid),
            Activation::Softmax => {
                for mut row in h.rows_mut() {
                    let max = row.fold(f64::NEG_INFINITY, |m, &v| m.max(v));
                    row.mapv_inplace(|v| (v - max).exp());
                    let sum = row.sum();
                    row.mapv_inplace(|v| v / sum);
                }
            }
        }
    }
}

/// A logistic function that neither overflows nor loses precision for large |x|.
pub fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// One validated dense layer.
#[derive(Debug, Clone)]
pub struct Layer {
    /// `inputs x units`, so a layer is `h.dot(&weights) + bias`.
    pub weights: Array2<f64>,
    pub bias: Array1<f64>,
    pub activation: Activation,
}

/// A validated, runnable dense model.
#[derive(Debug, Clone)]
pub struct Dense {
    inputs: usize,
    outputs: usize,
    /// One f64 input `input` of `inputs` values, one f64 output `output`, and `label` for
    /// classifiers (the names the KServe mapping gives dense models).
    signature: Signature,
    /// `(mean, std)`, both of length `inputs`, every `std` > 0.
    scaler: Option<(Array1<f64>, Array1<f64>)>,
    layers: Vec<Layer>,
    labels: Option<Vec<Label>>,
}

impl Dense {
    /// Validates every shape and number of the artifact and copies its weights into the form
    /// the forward pass uses.
    pub fn from_artifact(artifact: &Artifact) -> Result<Dense, ModelError> {
        if artifact.format != FORMAT_V1 {
            return Err(invalid(
                "format",
                format!(
                    "unknown format {:?}; this worker reads {FORMAT_V1:?}",
                    artifact.format
                ),
            ));
        }
        if artifact.inputs == 0 {
            return Err(invalid("inputs", "must be at least 1"));
        }
        if artifact.outputs == 0 {
            return Err(invalid("outputs", "must be at least 1"));
        }
        let scaler = match &artifact.scaler {
            None => None,
            Some(sc) => {
                for (name, v) in [("scaler.mean", &sc.mean), ("scaler.std", &sc.std)] {
                    if v.len() != artifact.inputs {
                        return Err(invalid(
                            name,
                            format!("has {} entries but inputs is {}", v.len(), artifact.inputs),
                        ));
                    }
                    check_finite(name, v)?;
                }
                if let Some(i) = sc.std.iter().position(|&s| s <= 0.0) {
                    return Err(invalid(
                        format!("scaler.std[{i}]"),
                        format!("is {}; every std must be greater than zero", sc.std[i]),
                    ));
                }
                Some((Array1::from(sc.mean.clone()), Array1::from(sc.std.clone())))
            }
        };
        if artifact.layers.is_empty() {
            return Err(invalid("layers", "a model needs at least one layer"));
        }
        let mut width = artifact.inputs;
        let mut layers = Vec::with_capacity(artifact.layers.len());
        for (l, spec) in artifact.layers.iter().enumerate() {
            let field = |name: &str| format!("layers[{l}].{name}");
            if spec.weights.len() != width {
                return Err(invalid(
                    field("weights"),
                    format!(
                        "has {} rows but its input width is {width} (one row per input)",
                        spec.weights.len()
                    ),
                ));
            }
            let units = spec.bias.len();
            if units == 0 {
                return Err(invalid(
                    field("bias"),
                    "is empty; a layer needs at least one unit",
                ));
            }
            for (r, row) in spec.weights.iter().enumerate() {
                if row.len() != units {
                    return Err(invalid(
                        format!("layers[{l}].weights[{r}]"),
                        format!("has {} columns but bias has {units} units", row.len()),
                    ));
                }
                check_finite(&format!("layers[{l}].weights[{r}]"), row)?;
            }
            // Sized only now that every row is known to hold `units` values: `width * units`
            // from unchecked rows could be gigabytes for an artifact of empty rows.
            let mut flat = Vec::with_capacity(width * units);
            for row in &spec.weights {
                flat.extend_from_slice(row);
            }
            check_finite(&field("bias"), &spec.bias)?;
            let activation = Activation::parse(&spec.activation).ok_or_else(|| {
                invalid(
                    field("activation"),
                    format!(
                        "unknown activation {:?}; use identity, relu, tanh, sigmoid or softmax",
                        spec.activation
                    ),
                )
            })?;
            if activation == Activation::Softmax && units == 1 {
                return Err(invalid(
                    field("activation"),
                    "softmax over one unit is always 1.0; use sigmoid for a binary classifier",
                ));
            }
            let weights =
                Array2::from_shape_vec((width, units), flat).expect("shape checked above");
            layers.push(Layer {
                weights,
                bias: Array1::from(spec.bias.clone()),
                activation,
            });
            width = units;
        }
        if width != artifact.outputs {
            return Err(invalid(
                "outputs",
                format!(
                    "is {} but the last layer has {width} units",
                    artifact.outputs
                ),
            ));
        }
        if let Some(labels) = &artifact.labels {
            let last = layers.last().expect("at least one layer").activation;
            if !matches!(last, Activation::Sigmoid | Activation::Softmax) {
                return Err(invalid(
                    "labels",
                    "only classifiers (last activation sigmoid or softmax) have labels",
                ));
            }
            let classes = if artifact.outputs == 1 {
                2
            } else {
                artifact.outputs
            };
            if labels.len() != classes {
                return Err(invalid(
                    "labels",
                    format!(
                        "has {} labels but the model has {classes} classes",
                        labels.len()
                    ),
                ));
            }
        }
        if let Some(metadata) = &artifact.metadata {
            if !metadata.is_object() {
                return Err(invalid("metadata", "must be a map"));
            }
        }
        let last = layers.last().expect("at least one layer").activation;
        let classifier = matches!(last, Activation::Sigmoid | Activation::Softmax);
        let label_dtype = match &artifact.labels {
            Some(labels) if labels.iter().all(|l| matches!(l, Label::Index(_))) => DType::I64,
            Some(_) => DType::String,
            None => DType::I64,
        };
        let signature = Signature {
            inputs: vec![TensorSpec::new("input", vec![artifact.inputs], DType::F64)],
            output: TensorSpec::new("output", vec![artifact.outputs], DType::F64),
            labels: classifier.then(|| TensorSpec::new("label", vec![], label_dtype)),
        };
        Ok(Dense {
            inputs: artifact.inputs,
            outputs: artifact.outputs,
            signature,
            scaler,
            labels: artifact.labels.clone(),
            layers,
        })
    }

    pub fn layers(&self) -> &[Layer] {
        &self.layers
    }

    fn forward_chunk(&self, x: ArrayView2<f64>) -> Array2<f64> {
        let mut h = match &self.scaler {
            Some((mean, std)) => (&x - mean) / std,
            None => x.to_owned(),
        };
        for layer in &self.layers {
            h = h.dot(&layer.weights);
            h += &layer.bias;
            layer.activation.apply(&mut h);
        }
        h
    }
}

impl Dense {
    /// Whether outputs are class probabilities: the last layer is sigmoid or softmax.
    pub fn is_classifier(&self) -> bool {
        self.signature.labels.is_some()
    }

    /// `rows x inputs` to `rows x outputs`. Batches larger than [`ROWS_PER_TASK`] are split
    /// by rows across the current rayon pool.
    pub fn forward(&self, x: ArrayView2<f64>) -> Array2<f64> {
        let rows = x.nrows();
        if rows <= ROWS_PER_TASK {
            return self.forward_chunk(x);
        }
        let tasks = rows
            .div_ceil(ROWS_PER_TASK)
            .min(rayon::current_num_threads());
        if tasks <= 1 {
            return self.forward_chunk(x);
        }
        let chunk = rows.div_ceil(tasks);
        let parts: Vec<Array2<f64>> = (0..tasks)
            .into_par_iter()
            .map(|t| {
                let end = ((t + 1) * chunk).min(rows);
                self.forward_chunk(x.slice(s![t * chunk..end, ..]))
            })
            .collect();
        let views: Vec<_> = parts.iter().map(|p| p.view()).collect();
        ndarray::concatenate(Axis(0), &views).expect("all parts have `outputs` columns")
    }
}

impl Backend for Dense {
    fn kind(&self) -> Kind {
        Kind::Dense
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    /// The f64 rows are moved into the matrix the forward pass reads, not copied.
    fn compute(&self, mut inputs: Vec<Tensor>) -> Result<Computed, ComputeError> {
        let input = inputs.pop().filter(|_| inputs.is_empty()).ok_or_else(|| {
            ComputeError::Mismatch("a dense model takes exactly one input".into())
        })?;
        let Data::F64(values) = input.data else {
            return Err(ComputeError::Mismatch(format!(
                "a dense model takes f64 values, not {}",
                input.data.dtype()
            )));
        };
        let x = Array2::from_shape_vec((input.rows, self.inputs), values)
            .map_err(|e| ComputeError::Mismatch(e.to_string()))?;
        let y = self.forward(x.view());
        let labels = self.is_classifier().then(|| {
            y.rows()
                .into_iter()
                .filter_map(|row| self.label(row.as_slice().expect("standard layout")))
                .collect()
        });
        let values = if y.is_standard_layout() {
            y.into_raw_vec_and_offset().0
        } else {
            y.iter().copied().collect()
        };
        Ok(Computed {
            outputs: Tensor::new(input.rows, vec![self.outputs], Data::F64(values)),
            labels,
            extras: Vec::new(),
        })
    }

    fn label(&self, output: &[f64]) -> Option<Label> {
        if !self.is_classifier() {
            return None;
        }
        let class = if output.len() == 1 {
            usize::from(output[0] >= 0.5)
        } else {
            output
                .iter()
                .enumerate()
                .fold((0, f64::NEG_INFINITY), |best, (i, &p)| {
                    if p > best.1 {
                        (i, p)
                    } else {
                        best
                    }
                })
                .0
        };
        Some(match &self.labels {
            Some(labels) => labels[class].clone(),
            None => Label::Index(class as i64),
        })
    }
}

fn check_finite(field: &str, values: &[f64]) -> Result<(), ModelError> {
    match values.iter().position(|v| !v.is_finite()) {
        None => Ok(()),
        Some(i) => Err(invalid(
            format!("{field}[{i}]"),
            format!("is {}; every number must be finite", values[i]),
        )),
    }
}

#[cfg(test)]
mod tests {
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
            assert!((out[[0, j]] - zj.exp() / sum).abs() < 1e-12);
        }
        assert_eq!(
            m.label(out.row(0).as_slice().unwrap()),
            Some(Label::Name("b".into()))
        );
        let artifact = Artifact::from_bytes(iris_json().as_bytes()).unwrap();
        assert_eq!(artifact.extra["future_key"], 7);
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
            rmp_serde::to_vec_named(&Artifact::from_bytes(iris_json().as_bytes()).unwrap())
                .unwrap();
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
}
