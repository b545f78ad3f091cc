//! Reply bodies: what a worker writes ([`PredictReply`], borrowing its outputs so nothing is
//! copied, each row in the model's per-row shape or as a binary tensor) and what a client
//! reads ([`Prediction`]).

use std::fmt;

use async_nats::HeaderMap;
use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::encoding::Encoding;
use crate::headers::name;
use crate::request::TensorDType;

/// A predicted label: the model's own label, or the class index when it has none.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Label {
    Index(i64),
    Name(String),
}

impl fmt::Display for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Label::Index(i) => write!(f, "{i}"),
            Label::Name(n) => f.write_str(n),
        }
    }
}

/// A row-major `rows x cols` block serialised as a list of lists, without copying.
pub struct MatrixRef<'a> {
    pub values: &'a [f64],
    pub cols: usize,
}

impl Serialize for MatrixRef<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.values.chunks(self.cols.max(1)))
    }
}

/// Borrowed reply values of any element type.
#[derive(Debug, Clone, Copy)]
pub enum ValuesRef<'a> {
    F32(&'a [f32]),
    F64(&'a [f64]),
    I64(&'a [i64]),
    Text(&'a [String]),
}

impl<'a> ValuesRef<'a> {
    pub fn len(&self) -> usize {
        match self {
            ValuesRef::F32(v) => v.len(),
            ValuesRef::F64(v) => v.len(),
            ValuesRef::I64(v) => v.len(),
            ValuesRef::Text(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn slice(&self, start: usize, end: usize) -> ValuesRef<'a> {
        match *self {
            ValuesRef::F32(v) => ValuesRef::F32(&v[start..end]),
            ValuesRef::F64(v) => ValuesRef::F64(&v[start..end]),
            ValuesRef::I64(v) => ValuesRef::I64(&v[start..end]),
            ValuesRef::Text(v) => ValuesRef::Text(&v[start..end]),
        }
    }

    fn serialize_one<S: Serializer>(&self, i: usize, s: S) -> Result<S::Ok, S::Error> {
        match self {
            ValuesRef::F32(v) => s.serialize_f32(v[i]),
            ValuesRef::F64(v) => s.serialize_f64(v[i]),
            ValuesRef::I64(v) => s.serialize_i64(v[i]),
            ValuesRef::Text(v) => s.serialize_str(&v[i]),
        }
    }

    /// Little-endian bytes of every value as `dtype` (text has none).
    fn le_bytes(&self, dtype: TensorDType) -> Vec<u8> {
        fn bytes<T: Copy>(v: &[T], f: impl Fn(T) -> f64, dtype: TensorDType) -> Vec<u8> {
            let mut out = Vec::with_capacity(v.len() * dtype.size());
            for &x in v {
                match dtype {
                    TensorDType::F32 => out.extend_from_slice(&(f(x) as f32).to_le_bytes()),
                    TensorDType::F64 => out.extend_from_slice(&f(x).to_le_bytes()),
                }
            }
            out
        }
        match (self, dtype) {
            (ValuesRef::F32(v), TensorDType::F32) => {
                v.iter().flat_map(|x| x.to_le_bytes()).collect()
            }
            (ValuesRef::F32(v), _) => bytes(v, |x| x as f64, dtype),
            (ValuesRef::F64(v), _) => bytes(v, |x| x, dtype),
            (ValuesRef::I64(v), _) => bytes(v, |x| x as f64, dtype),
            (ValuesRef::Text(_), _) => Vec::new(),
        }
    }
}

/// `rows` rows of `row_shape` values, serialised as nested lists (each row keeping its
/// shape, a bare value when the shape is `[]`) or, when `binary` is set, as a binary tensor
/// `{"shape", "dtype", "data"}`.
pub struct OutputsRef<'a> {
    pub values: ValuesRef<'a>,
    pub rows: usize,
    pub row_shape: &'a [usize],
    pub binary: Option<TensorDType>,
}

impl Serialize for OutputsRef<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.binary {
            Some(dtype) if !matches!(self.values, ValuesRef::Text(_)) => {
                let shape: Vec<usize> = std::iter::once(self.rows)
                    .chain(self.row_shape.iter().copied())
                    .collect();
                let data = self.values.le_bytes(dtype);
                let mut map = s.serialize_map(Some(3))?;
                map.serialize_entry("shape", &shape)?;
                map.serialize_entry("dtype", dtype.as_str())?;
                map.serialize_entry("data", &Bin(&data))?;
                map.end()
            }
            _ => Nested {
                values: self.values,
                shape: &self.row_shape_with_rows(),
            }
            .serialize(s),
        }
    }
}

impl OutputsRef<'_> {
    fn row_shape_with_rows(&self) -> Vec<usize> {
        std::iter::once(self.rows)
            .chain(self.row_shape.iter().copied())
            .collect()
    }
}

/// Values as nested lists of `shape` (a bare value for `[]`).
struct Nested<'a, 's> {
    values: ValuesRef<'a>,
    shape: &'s [usize],
}

impl Serialize for Nested<'_, '_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let Some((&n, inner)) = self.shape.split_first() else {
            return self.values.serialize_one(0, s);
        };
        let step: usize = inner.iter().product();
        let mut seq = s.serialize_seq(Some(n))?;
        for i in 0..n {
            seq.serialize_element(&Nested {
                values: self.values.slice(i * step, (i + 1) * step),
                shape: inner,
            })?;
        }
        seq.end()
    }
}

struct Bin<'a>(&'a [u8]);

impl Serialize for Bin<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.0)
    }
}

/// `#[serde(with = "as_bytes")]`: a byte slice as MessagePack bin.
pub mod as_bytes {
    use serde::Serializer;

    pub fn serialize<S: Serializer>(v: &&[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }
}

/// `y_pred`: the first row's prediction, a bare value when a row has one value and the row
/// (in its shape) otherwise.
pub struct YPred<'a> {
    pub values: ValuesRef<'a>,
    pub row_shape: &'a [usize],
}

impl Serialize for YPred<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let n: usize = self.row_shape.iter().product();
        let shape: &[usize] = if n == 1 { &[] } else { self.row_shape };
        Nested {
            values: self.values.slice(0, n),
            shape,
        }
        .serialize(s)
    }
}

/// The body of a successful reply. `L` is whatever label type the server holds (anything that
/// serialises as an integer or a string). `extras` are further per-request fields a kind of
/// model adds (a text encoder's `tokens`).
pub struct PredictReply<'a, L: Serialize = Label> {
    pub outputs: OutputsRef<'a>,
    pub labels: Option<&'a [L]>,
    pub model: &'a str,
    pub version: u64,
    pub id: Option<&'a str>,
    pub y_pred: Option<YPred<'a>>,
    pub extras: Vec<(&'a str, OutputsRef<'a>)>,
}

impl<L: Serialize> Serialize for PredictReply<'_, L> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        map.serialize_entry("outputs", &self.outputs)?;
        if let Some(labels) = self.labels {
            map.serialize_entry("labels", labels)?;
        }
        map.serialize_entry("model", self.model)?;
        map.serialize_entry("version", &self.version)?;
        if let Some(id) = self.id {
            map.serialize_entry("id", id)?;
        }
        if let Some(y) = &self.y_pred {
            map.serialize_entry("y_pred", y)?;
        }
        for (name, extra) in &self.extras {
            map.serialize_entry(name, extra)?;
        }
        map.end()
    }
}

/// The decoded body of a successful reply, as a client sees it. Each row of `outputs` is
/// flattened, whatever its shape.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Prediction {
    #[serde(deserialize_with = "flat_rows")]
    pub outputs: Vec<Vec<f64>>,
    #[serde(default)]
    pub labels: Option<Vec<Label>>,
    pub model: String,
    pub version: u64,
    #[serde(default)]
    pub id: Option<String>,
}

/// Rows of any nesting (or bare numbers) as flat rows.
fn flat_rows<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Vec<f64>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Value {
        Number(f64),
        List(Vec<Value>),
    }
    fn flatten(v: Value, out: &mut Vec<f64>) {
        match v {
            Value::Number(x) => out.push(x),
            Value::List(items) => items.into_iter().for_each(|i| flatten(i, out)),
        }
    }
    let rows = Vec::<Value>::deserialize(d)?;
    Ok(rows
        .into_iter()
        .map(|row| {
            let mut out = Vec::new();
            flatten(row, &mut out);
            out
        })
        .collect())
}

/// Reply headers for a success: its encoding, the version that computed it and the id of the
/// worker that answered.
pub fn reply_headers(encoding: Encoding, version: u64, worker: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(name::CONTENT_TYPE, encoding.content_type());
    h.insert(name::VERSION, version.to_string());
    h.insert(name::WORKER, worker);
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply<'a>(outputs: OutputsRef<'a>, y_pred: Option<YPred<'a>>) -> serde_json::Value {
        let body = PredictReply::<Label> {
            outputs,
            labels: None,
            model: "m",
            version: 1,
            id: None,
            y_pred,
            extras: vec![],
        };
        serde_json::from_slice(&Encoding::Json.encode(&body).unwrap()).unwrap()
    }

    #[test]
    fn outputs_keep_their_per_row_shape() {
        let v: Vec<f32> = (0..8).map(|i| i as f32).collect();
        let nested = OutputsRef {
            values: ValuesRef::F32(&v),
            rows: 2,
            row_shape: &[2, 2],
            binary: None,
        };
        let y = YPred {
            values: ValuesRef::F32(&v),
            row_shape: &[2, 2],
        };
        let got = reply(nested, Some(y));
        assert_eq!(
            got["outputs"],
            serde_json::json!([[[0.0, 1.0], [2.0, 3.0]], [[4.0, 5.0], [6.0, 7.0]]])
        );
        assert_eq!(got["y_pred"], serde_json::json!([[0.0, 1.0], [2.0, 3.0]]));
        let scalars = OutputsRef {
            values: ValuesRef::I64(&[3, 4]),
            rows: 2,
            row_shape: &[],
            binary: None,
        };
        let y = YPred {
            values: ValuesRef::I64(&[3, 4]),
            row_shape: &[],
        };
        let got = reply(scalars, Some(y));
        assert_eq!(got["outputs"], serde_json::json!([3, 4]));
        assert_eq!(got["y_pred"], serde_json::json!(3));
    }

    /// f32 outputs (a dense model's) print as the shortest text that reads back as the same
    /// f32, not as the f64 they widen to (0.30000001192092896).
    #[test]
    fn f32_outputs_print_as_f32() {
        let v = [0.3f32, 1e-7, 123456.79, -2.5];
        let body = PredictReply::<Label> {
            outputs: OutputsRef {
                values: ValuesRef::F32(&v),
                rows: 2,
                row_shape: &[2],
                binary: None,
            },
            labels: None,
            model: "m",
            version: 1,
            id: None,
            y_pred: Some(YPred {
                values: ValuesRef::F32(&v),
                row_shape: &[2],
            }),
            extras: vec![],
        };
        let text = String::from_utf8(Encoding::Json.encode(&body).unwrap().to_vec()).unwrap();
        assert!(
            text.contains(r#""outputs":[[0.3,1e-7],[123456.79,-2.5]]"#),
            "{text}"
        );
        assert!(text.contains(r#""y_pred":[0.3,1e-7]"#), "{text}");
    }

    #[test]
    fn binary_outputs_are_little_endian_tensors() {
        let v = [1.5f64, -2.0, 3.0];
        let body = PredictReply::<Label> {
            outputs: OutputsRef {
                values: ValuesRef::F64(&v),
                rows: 3,
                row_shape: &[1],
                binary: Some(TensorDType::F32),
            },
            labels: None,
            model: "m",
            version: 1,
            id: None,
            y_pred: None,
            extras: vec![],
        };
        let bytes = Encoding::MsgPack.encode(&body).unwrap();
        #[derive(Deserialize)]
        struct T {
            shape: Vec<usize>,
            dtype: String,
            #[serde(with = "serde_bytes_vec")]
            data: Vec<u8>,
        }
        mod serde_bytes_vec {
            pub fn deserialize<'de, D: serde::Deserializer<'de>>(
                d: D,
            ) -> Result<Vec<u8>, D::Error> {
                struct V;
                impl serde::de::Visitor<'_> for V {
                    type Value = Vec<u8>;
                    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                        f.write_str("bytes")
                    }
                    fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                        Ok(v.to_vec())
                    }
                }
                d.deserialize_bytes(V)
            }
        }
        #[derive(Deserialize)]
        struct R {
            outputs: T,
        }
        let r: R = rmp_serde::from_slice(&bytes).unwrap();
        assert_eq!(r.outputs.shape, [3, 1]);
        assert_eq!(r.outputs.dtype, "f32");
        let got: Vec<f32> = r
            .outputs
            .data
            .chunks(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        assert_eq!(got, [1.5, -2.0, 3.0]);
    }

    #[test]
    fn a_client_reads_rows_of_any_shape_flat() {
        let p: Prediction = serde_json::from_str(
            r#"{"outputs": [[[1, 2]], [[3, 4]]], "labels": [-1, "a"], "model": "m", "version": 2}"#,
        )
        .unwrap();
        assert_eq!(p.outputs, [[1.0, 2.0], [3.0, 4.0]]);
        assert_eq!(
            p.labels.unwrap(),
            [Label::Index(-1), Label::Name("a".into())]
        );
        let p: Prediction =
            serde_json::from_str(r#"{"outputs": [1.5, 2], "model": "m", "version": 2}"#).unwrap();
        assert_eq!(p.outputs, [[1.5], [2.0]]);
    }
}
