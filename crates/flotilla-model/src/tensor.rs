//! The seam's data types: what a backend declares about its inputs and outputs
//! ([`Signature`], [`TensorSpec`], [`DType`]) and what flows through it ([`Tensor`], [`Data`],
//! [`Computed`]). Every tensor is batch-first: its first dimension is the rows, and a spec's
//! `shape` is the shape of one row.
//!
//! Numbers and text are variants of one [`Data`] enum, so a backend whose rows are strings
//! (a text encoder) plugs into the same seam as one whose rows are numbers, and the worker
//! moves both without knowing which it has.

use std::fmt;

use serde::Serialize;

use crate::Label;

/// The element type of a tensor a backend takes or gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    F32,
    F64,
    I64,
    String,
}

impl DType {
    pub fn as_str(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F64 => "f64",
            DType::I64 => "i64",
            DType::String => "string",
        }
    }

    pub fn is_numeric(self) -> bool {
        self != DType::String
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One named input or output: its per-row shape (the batch dimension left out) and dtype.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TensorSpec {
    pub name: String,
    /// The shape of one row: `[]` for a scalar per row (a text, a label), `[4]` for four
    /// features, `[1, 8, 8]` for a one-channel 8x8 image.
    pub shape: Vec<usize>,
    pub dtype: DType,
}

impl TensorSpec {
    pub fn new(name: impl Into<String>, shape: Vec<usize>, dtype: DType) -> TensorSpec {
        TensorSpec {
            name: name.into(),
            shape,
            dtype,
        }
    }

    /// Values in one row.
    pub fn row_len(&self) -> usize {
        self.shape.iter().product()
    }

    /// The shape with `-1` for the batch dimension, as discovery metadata shows it.
    pub fn batch_shape(&self) -> Vec<i64> {
        std::iter::once(-1)
            .chain(self.shape.iter().map(|&d| d as i64))
            .collect()
    }
}

/// What a model takes and what its replies carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    /// In the order [`crate::Backend::compute`] takes them.
    pub inputs: Vec<TensorSpec>,
    /// What a reply's `outputs` holds per row (class probabilities for a classifier).
    pub output: TensorSpec,
    /// For classifiers, what a reply's `labels` holds per row.
    pub labels: Option<TensorSpec>,
}

/// The values of a tensor, flat and row-major.
#[derive(Debug, Clone, PartialEq)]
pub enum Data {
    F32(Vec<f32>),
    F64(Vec<f64>),
    I64(Vec<i64>),
    String(Vec<String>),
}

impl Data {
    pub fn dtype(&self) -> DType {
        match self {
            Data::F32(_) => DType::F32,
            Data::F64(_) => DType::F64,
            Data::I64(_) => DType::I64,
            Data::String(_) => DType::String,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Data::F32(v) => v.len(),
            Data::F64(v) => v.len(),
            Data::I64(v) => v.len(),
            Data::String(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// An empty buffer of `dtype` with room for `capacity` values.
    pub fn with_capacity(dtype: DType, capacity: usize) -> Data {
        match dtype {
            DType::F32 => Data::F32(Vec::with_capacity(capacity)),
            DType::F64 => Data::F64(Vec::with_capacity(capacity)),
            DType::I64 => Data::I64(Vec::with_capacity(capacity)),
            DType::String => Data::String(Vec::with_capacity(capacity)),
        }
    }

    /// `len` zeros (empty strings for text): what a warm-up pass feeds.
    pub fn zeros(dtype: DType, len: usize) -> Data {
        match dtype {
            DType::F32 => Data::F32(vec![0.0; len]),
            DType::F64 => Data::F64(vec![0.0; len]),
            DType::I64 => Data::I64(vec![0; len]),
            DType::String => Data::String(vec![String::new(); len]),
        }
    }

    /// Values `start..end`, borrowed.
    pub fn slice(&self, start: usize, end: usize) -> DataRef<'_> {
        match self {
            Data::F32(v) => DataRef::F32(&v[start..end]),
            Data::F64(v) => DataRef::F64(&v[start..end]),
            Data::I64(v) => DataRef::I64(&v[start..end]),
            Data::String(v) => DataRef::String(&v[start..end]),
        }
    }

    /// Every value as f64; `None` for text.
    pub fn to_f64(&self) -> Option<Vec<f64>> {
        match self {
            Data::F32(v) => Some(v.iter().map(|&x| x as f64).collect()),
            Data::F64(v) => Some(v.clone()),
            Data::I64(v) => Some(v.iter().map(|&x| x as f64).collect()),
            Data::String(_) => None,
        }
    }
}

/// A borrowed run of values, e.g. one request's rows of a batch's outputs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum DataRef<'a> {
    F32(&'a [f32]),
    F64(&'a [f64]),
    I64(&'a [i64]),
    String(&'a [String]),
}

impl DataRef<'_> {
    pub fn len(&self) -> usize {
        match self {
            DataRef::F32(v) => v.len(),
            DataRef::F64(v) => v.len(),
            DataRef::I64(v) => v.len(),
            DataRef::String(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The index of the first value that is not a finite number (text has none).
    pub fn first_non_finite(&self) -> Option<usize> {
        match self {
            DataRef::F32(v) => v.iter().position(|x| !x.is_finite()),
            DataRef::F64(v) => v.iter().position(|x| !x.is_finite()),
            DataRef::I64(_) | DataRef::String(_) => None,
        }
    }
}

/// A batch-first tensor: `rows` rows, each of shape `row_shape`.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub rows: usize,
    pub row_shape: Vec<usize>,
    pub data: Data,
}

impl Tensor {
    pub fn new(rows: usize, row_shape: Vec<usize>, data: Data) -> Tensor {
        Tensor {
            rows,
            row_shape,
            data,
        }
    }

    /// Values in one row.
    pub fn row_len(&self) -> usize {
        self.row_shape.iter().product()
    }

    /// The full shape, batch dimension first.
    pub fn shape(&self) -> Vec<usize> {
        std::iter::once(self.rows)
            .chain(self.row_shape.iter().copied())
            .collect()
    }

    /// Rows `start..end`, borrowed.
    pub fn rows_slice(&self, start: usize, end: usize) -> DataRef<'_> {
        let n = self.row_len();
        self.data.slice(start * n, end * n)
    }
}

/// What a backend computed for a batch: one row of each per input row.
#[derive(Debug, Clone, PartialEq)]
pub struct Computed {
    /// A reply's `outputs`: `rows x signature.output.shape`.
    pub outputs: Tensor,
    /// A classifier's label per row.
    pub labels: Option<Vec<Label>>,
    /// Further per-row reply fields a kind of model adds (a text encoder's `tokens`), each
    /// sent under its name.
    pub extras: Vec<(String, Tensor)>,
}

/// Why a batch could not be computed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ComputeError {
    /// The batch does not match the model's signature; the caller should have checked.
    #[error("the batch does not match the model: {0}")]
    Mismatch(String),
    /// The backend failed on these inputs.
    #[error("{0}")]
    Failed(String),
}
