//! The onnx kind: an ONNX file run by tract (pure Rust), including the `ai.onnx.ml`
//! operators scikit-learn exports use.
//!
//! A file is turned into one optimised plan with a symbolic batch dimension `N` when it is
//! loaded ([`load`]), never per request; batches run through that plan on the calling thread,
//! and batches larger than [`ROWS_PER_TASK`] are split by rows across the current rayon pool
//! (rows are independent along the batch dimension). A file whose batch dimension is a fixed
//! number runs in chunks of exactly that many rows.
//!
//! A model with outputs named `label` and `probabilities` is a classifier: `outputs` are the
//! probabilities and each row's label is the class label at their argmax, read from the
//! classifier's attributes (strings stay strings, integers stay integers). Otherwise
//! `outputs` is the first output, with its per-row shape.

mod load;
mod ml;

use std::sync::Arc;

use rayon::prelude::*;
use tract_onnx::prelude::{TValue, Tensor as TractTensor, TypedRunnableModel};
use tract_onnx::tract_hir::internal::DatumType;

use crate::{
    Backend, ComputeError, Computed, Data, Kind, Label, ModelError, Signature, Tensor,
    ROWS_PER_TASK,
};
use load::{Loaded, Outputs};

/// A loaded ONNX model and its optimised plan.
pub struct Onnx {
    plan: Arc<TypedRunnableModel>,
    /// The plan for single-row chunks, when the file is small enough to hold twice.
    single_row: Option<Arc<TypedRunnableModel>>,
    signature: Signature,
    outputs: Outputs,
    fixed_batch: Option<usize>,
}

impl std::fmt::Debug for Onnx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Onnx")
            .field("signature", &self.signature)
            .field("fixed_batch", &self.fixed_batch)
            .finish_non_exhaustive()
    }
}

/// One chunk's results.
struct Part {
    outputs: Data,
    labels: Option<Vec<Label>>,
}

impl Onnx {
    /// Decodes, checks and optimises an ONNX file. Errors name what was expected: the
    /// unsupported operator, the input without a name, the dtype, the dimension.
    pub fn from_bytes(bytes: &[u8]) -> Result<Onnx, ModelError> {
        load::load(bytes).map(Onnx::from_loaded)
    }

    fn from_loaded(loaded: Loaded) -> Onnx {
        let Loaded {
            plan,
            single_row,
            signature,
            outputs,
            fixed_batch,
        } = loaded;
        Onnx {
            plan,
            single_row,
            signature,
            outputs,
            fixed_batch,
        }
    }

    /// Runs rows `start..end` of every input through the plan, padding with zeros up to
    /// `pad_to` rows for a fixed batch size (the padding rows' results are dropped).
    fn run(
        &self,
        inputs: &[Tensor],
        start: usize,
        end: usize,
        pad_to: usize,
    ) -> Result<Part, ComputeError> {
        let rows = end - start;
        let fed = inputs
            .iter()
            .map(|t| to_tract(t, start, end, pad_to.max(rows)))
            .collect::<Result<_, _>>()?;
        let plan = match &self.single_row {
            Some(single) if rows == 1 => single,
            _ => &self.plan,
        };
        let results = plan
            .run(fed)
            .map_err(|e| ComputeError::Failed(format!("{e:#}")))?;
        let values = self.signature.output.row_len() * rows;
        let outputs = from_tract(&results[0], values)?;
        let labels = match &self.outputs {
            Outputs::Plain => None,
            Outputs::Derived(classes) => Some(argmax_labels(&outputs, classes)),
            Outputs::FromModel => Some(match from_tract(&results[1], rows)? {
                Data::I64(v) => v.into_iter().map(Label::Index).collect(),
                Data::String(v) => v.into_iter().map(Label::Name).collect(),
                other => {
                    return Err(ComputeError::Failed(format!(
                        "the label output is {}, not integers or strings",
                        other.dtype()
                    )))
                }
            }),
        };
        Ok(Part { outputs, labels })
    }
}

impl Backend for Onnx {
    fn kind(&self) -> Kind {
        Kind::Onnx
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn compute(&self, inputs: Vec<Tensor>) -> Result<Computed, ComputeError> {
        let rows = inputs.first().map_or(0, |t| t.rows);
        let chunk = match self.fixed_batch {
            Some(b) => b,
            None => {
                let tasks = rows
                    .div_ceil(ROWS_PER_TASK)
                    .min(rayon::current_num_threads())
                    .max(1);
                rows.div_ceil(tasks).max(1)
            }
        };
        let pad_to = self.fixed_batch.unwrap_or(0);
        let parts: Vec<Part> = if rows <= chunk {
            vec![self.run(&inputs, 0, rows, pad_to)?]
        } else {
            (0..rows.div_ceil(chunk))
                .into_par_iter()
                .map(|c| self.run(&inputs, c * chunk, ((c + 1) * chunk).min(rows), pad_to))
                .collect::<Result<_, _>>()?
        };
        let mut parts = parts.into_iter();
        let Part {
            mut outputs,
            mut labels,
        } = parts.next().expect("at least one chunk");
        for part in parts {
            append(&mut outputs, part.outputs);
            if let (Some(all), Some(more)) = (labels.as_mut(), part.labels) {
                all.extend(more);
            }
        }
        Ok(Computed {
            outputs: Tensor::new(rows, self.signature.output.shape.clone(), outputs),
            labels,
            extras: Vec::new(),
        })
    }
}

/// Rows `start..end` of `t` as a tract tensor of `rows` rows (zeros past `end - start`).
fn to_tract(t: &Tensor, start: usize, end: usize, rows: usize) -> Result<TValue, ComputeError> {
    let mut shape = t.shape();
    shape[0] = rows;
    let n = t.row_len();
    let pad = (rows - (end - start)) * n;
    let tensor = match t.data.slice(start * n, end * n) {
        crate::DataRef::F32(v) if pad == 0 => TractTensor::from_shape(&shape, v),
        crate::DataRef::F64(v) if pad == 0 => TractTensor::from_shape(&shape, v),
        crate::DataRef::I64(v) if pad == 0 => TractTensor::from_shape(&shape, v),
        crate::DataRef::F32(v) => TractTensor::from_shape(&shape, &padded(v, pad)),
        crate::DataRef::F64(v) => TractTensor::from_shape(&shape, &padded(v, pad)),
        crate::DataRef::I64(v) => TractTensor::from_shape(&shape, &padded(v, pad)),
        crate::DataRef::String(_) => {
            return Err(ComputeError::Mismatch(
                "ONNX models here take numeric inputs only".into(),
            ))
        }
    };
    tensor
        .map(TValue::from)
        .map_err(|e| ComputeError::Mismatch(format!("{e:#}")))
}

fn padded<T: Copy + Default>(v: &[T], pad: usize) -> Vec<T> {
    let mut out = Vec::with_capacity(v.len() + pad);
    out.extend_from_slice(v);
    out.resize(v.len() + pad, T::default());
    out
}

/// The first `len` values of a tract output (a fixed batch's padding rows come after).
fn from_tract(t: &TractTensor, len: usize) -> Result<Data, ComputeError> {
    let failed = |e: tract_onnx::prelude::TractError| ComputeError::Failed(format!("{e:#}"));
    if t.len() < len {
        return Err(ComputeError::Failed(format!(
            "the model gave {} values where {len} were expected",
            t.len()
        )));
    }
    let view = t.try_as_plain_ram().map_err(failed)?;
    Ok(match t.datum_type() {
        DatumType::F32 => Data::F32(view.as_slice::<f32>().map_err(failed)?[..len].to_vec()),
        DatumType::F64 => Data::F64(view.as_slice::<f64>().map_err(failed)?[..len].to_vec()),
        DatumType::I64 => Data::I64(view.as_slice::<i64>().map_err(failed)?[..len].to_vec()),
        DatumType::I32 => Data::I64(
            view.as_slice::<i32>().map_err(failed)?[..len]
                .iter()
                .map(|&v| v as i64)
                .collect(),
        ),
        DatumType::String => {
            Data::String(view.as_slice::<String>().map_err(failed)?[..len].to_vec())
        }
        other => {
            return Err(ComputeError::Failed(format!(
                "the model gave {other:?} values, which flotilla does not serve"
            )))
        }
    })
}

/// Each row's label: the class at the row's highest probability (the first on ties).
fn argmax_labels(probabilities: &Data, classes: &[Label]) -> Vec<Label> {
    fn pick<T: PartialOrd + Copy>(v: &[T], classes: &[Label]) -> Vec<Label> {
        v.chunks(classes.len())
            .map(|row| {
                let best = (1..row.len()).fold(0, |b, i| if row[i] > row[b] { i } else { b });
                classes[best].clone()
            })
            .collect()
    }
    match probabilities {
        Data::F32(v) => pick(v, classes),
        Data::F64(v) => pick(v, classes),
        Data::I64(v) => pick(v, classes),
        Data::String(_) => Vec::new(),
    }
}

/// Appends `more` to `all`; both come from the same output, so they have one dtype.
fn append(all: &mut Data, more: Data) {
    match (all, more) {
        (Data::F32(a), Data::F32(b)) => a.extend(b),
        (Data::F64(a), Data::F64(b)) => a.extend(b),
        (Data::I64(a), Data::I64(b)) => a.extend(b),
        (Data::String(a), Data::String(b)) => a.extend(b),
        _ => unreachable!("chunks of one output share its dtype"),
    }
}
