//! The dense kind: the `flotilla.model.v1` artifact (a stack of dense layers with an optional
//! input scaler), its validation, and its forward pass on ndarray. Large batches are split by
//! rows across the current rayon pool.
//!
//! The layers are stored and multiplied in f32, as serving systems compute: half the memory
//! traffic of f64 and twice the SIMD lanes, for outputs within about 1e-6 relative of the f64
//! reference. The scaler stays in f64 and runs on the numbers as sent: a feature far from zero
//! relative to its spread (a timestamp, a price) would lose its significant digits if it were
//! rounded to f32 before its mean is subtracted, where the standardised value rounds harmlessly.
//! The artifact keeps its numbers as they are; only the served copy is f32.

mod artifact;
mod layer;

use ndarray::{s, Array1, Array2, ArrayView2, Axis, Zip};
use rayon::prelude::*;

pub use artifact::{Artifact, ArtifactEncoding, LayerSpec, Scaler, FORMAT_V1};
pub use layer::{sigmoid, Activation, Layer};

use crate::{
    invalid, Backend, ComputeError, Computed, DType, Data, Kind, Label, ModelError, Signature,
    Tensor, TensorSpec, INLINE_MULTIPLY_ADDS, ROWS_PER_TASK,
};

/// A validated, runnable dense model.
#[derive(Debug, Clone)]
pub struct Dense {
    inputs: usize,
    outputs: usize,
    /// One f64 input `input` of `inputs` values (the scaler's precision), one f32 output
    /// `output` (the layers'), and `label` for classifiers (the names the KServe mapping
    /// gives dense models).
    signature: Signature,
    /// `(mean, 1 / std)`, both of length `inputs`, every `std` > 0: standardising multiplies
    /// by the reciprocal, which differs from dividing by under an f64 ulp, far below the f32
    /// rounding that follows.
    scaler: Option<(Array1<f64>, Array1<f64>)>,
    /// In f32, converted once when the model is built.
    layers: Vec<Layer<f32>>,
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
                let inverse = sc.std.iter().map(|s| 1.0 / s).collect();
                Some((Array1::from(sc.mean.clone()), Array1::from_vec(inverse)))
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
                check_f32(&format!("layers[{l}].weights[{r}]"), row)?;
            }
            // Sized only now that every row is known to hold `units` values: `width * units`
            // from unchecked rows could be gigabytes for an artifact of empty rows.
            let mut flat = Vec::with_capacity(width * units);
            for row in &spec.weights {
                flat.extend(row.iter().map(|&w| w as f32));
            }
            check_f32(&field("bias"), &spec.bias)?;
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
                bias: spec.bias.iter().map(|&b| b as f32).collect(),
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
            output: TensorSpec::new("output", vec![artifact.outputs], DType::F32),
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

    pub fn layers(&self) -> &[Layer<f32>] {
        &self.layers
    }

    /// Whether outputs are class probabilities: the last layer is sigmoid or softmax.
    pub fn is_classifier(&self) -> bool {
        self.signature.labels.is_some()
    }

    /// `rows x inputs` to `rows x outputs`. Batches larger than [`ROWS_PER_TASK`] are split
    /// by rows across the current rayon pool.
    pub fn forward(&self, x: ArrayView2<f64>) -> Array2<f32> {
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
        let parts: Vec<Array2<f32>> = (0..tasks)
            .into_par_iter()
            .map(|t| {
                let end = ((t + 1) * chunk).min(rows);
                self.forward_chunk(x.slice(s![t * chunk..end, ..]))
            })
            .collect();
        let views: Vec<_> = parts.iter().map(|p| p.view()).collect();
        ndarray::concatenate(Axis(0), &views).expect("all parts have `outputs` columns")
    }

    /// The scaler in f64, rounded to f32 as it is written, then the layers in f32.
    fn forward_chunk(&self, x: ArrayView2<f64>) -> Array2<f32> {
        let mut h = Array2::<f32>::zeros(x.raw_dim());
        match &self.scaler {
            Some((mean, inverse_std)) => Zip::from(&mut h)
                .and(&x)
                .and_broadcast(mean)
                .and_broadcast(inverse_std)
                .for_each(|h, &x, &m, &r| *h = ((x - m) * r) as f32),
            None => Zip::from(&mut h).and(&x).for_each(|h, &x| *h = x as f32),
        }
        for layer in &self.layers {
            h = layer.forward(h.view());
        }
        h
    }

    /// The predicted class of one output row: a sigmoid's P(class 1) against 0.5, else the
    /// first largest probability.
    fn label_of<A: Copy + Into<f64>>(&self, output: &[A]) -> Option<Label> {
        if !self.is_classifier() {
            return None;
        }
        let class = if output.len() == 1 {
            usize::from(output[0].into() >= 0.5)
        } else {
            output
                .iter()
                .enumerate()
                .fold((0, f64::NEG_INFINITY), |best, (i, &p)| {
                    if p.into() > best.1 {
                        (i, p.into())
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

impl Backend for Dense {
    fn kind(&self) -> Kind {
        Kind::Dense
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    /// Reads the f64 rows in place; the outputs' f32 buffer is moved into the reply, not
    /// copied.
    fn compute(&self, mut inputs: Vec<Tensor>) -> Result<Computed, ComputeError> {
        let input = inputs.pop().filter(|_| inputs.is_empty()).ok_or_else(|| {
            ComputeError::Mismatch("a dense model takes exactly one input".into())
        })?;
        let Data::F64(values) = &input.data else {
            return Err(ComputeError::Mismatch(format!(
                "a dense model takes f64 values, not {}",
                input.data.dtype()
            )));
        };
        let x = ArrayView2::from_shape((input.rows, self.inputs), values)
            .map_err(|e| ComputeError::Mismatch(e.to_string()))?;
        let y = self.forward(x);
        let labels = self.is_classifier().then(|| {
            y.rows()
                .into_iter()
                .filter_map(|row| self.label_of(row.as_slice().expect("standard layout")))
                .collect()
        });
        let values = if y.is_standard_layout() {
            y.into_raw_vec_and_offset().0
        } else {
            y.iter().copied().collect()
        };
        Ok(Computed {
            outputs: Tensor::new(input.rows, vec![self.outputs], Data::F32(values)),
            labels,
            extras: Vec::new(),
        })
    }

    fn label(&self, output: &[f64]) -> Option<Label> {
        self.label_of(output)
    }

    /// Rows whose multiply-adds (every layer's weights and biases, and the scaler's two per
    /// input) stay within [`INLINE_MULTIPLY_ADDS`], and never a batch the pool would split.
    fn inline_rows(&self) -> usize {
        let per_row = self
            .layers
            .iter()
            .map(|l| l.weights.len() + l.bias.len())
            .sum::<usize>()
            + self.scaler.as_ref().map_or(0, |_| 2 * self.inputs);
        (INLINE_MULTIPLY_ADDS / per_row.max(1)).min(ROWS_PER_TASK)
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

/// [`check_finite`] for numbers the layers hold in f32: beyond its range they would be
/// infinite there.
fn check_f32(field: &str, values: &[f64]) -> Result<(), ModelError> {
    check_finite(field, values)?;
    match values.iter().position(|v| v.abs() > f32::MAX as f64) {
        None => Ok(()),
        Some(i) => Err(invalid(
            format!("{field}[{i}]"),
            format!(
                "is {}, beyond the f32 range (about 3.4e38) the layers compute in",
                values[i]
            ),
        )),
    }
}

#[cfg(test)]
mod tests;
