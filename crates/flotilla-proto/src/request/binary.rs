//! `inputs` as a map: either one binary tensor (`{"shape", "dtype", "data": <bin>}`,
//! MessagePack only) or named inputs (`{"<input name>": rows or binary tensor, ...}`).
//!
//! A binary tensor is checked before anything is allocated for it: its shape must multiply
//! out (without overflow) to exactly as many values as `data` has bytes for, and its first
//! dimension must be within `max_rows`. Only then are the bytes, already in the body,
//! converted, and every value checked to be finite.

use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde::Deserializer;

use super::nested::{Field, Nest};
use super::{InputTensor, Inputs, KeyName, Limits, TensorDType, Values};

/// One value of an `inputs` map, before the map as a whole is understood.
enum Entry {
    Rows(InputTensor),
    Bytes(Vec<u8>),
    Text(String),
    Tensor(InputTensor),
}

impl Entry {
    fn kind(&self) -> &'static str {
        match self {
            Entry::Rows(_) => "a list",
            Entry::Bytes(_) => "binary data",
            Entry::Text(_) => "a string",
            Entry::Tensor(_) => "a map",
        }
    }
}

/// Reads the `inputs` map. `nested` is true inside a named input, where only a binary
/// tensor may appear.
pub(crate) struct MapSeed<'a> {
    pub(crate) limits: &'a Limits,
    pub(crate) name: Option<String>,
}

impl<'de> MapSeed<'_> {
    pub(crate) fn read<A: MapAccess<'de>>(self, mut map: A) -> Result<Inputs, A::Error> {
        let mut entries: Vec<(String, Entry)> = Vec::new();
        while let Some(key) = map.next_key::<KeyName>()? {
            let key = key.0;
            if entries.iter().any(|(k, _)| *k == key) {
                return Err(de::Error::custom(format!(
                    "{} has the key {key:?} twice",
                    self.field()
                )));
            }
            let entry = map.next_value_seed(EntrySeed {
                limits: self.limits,
                key: &key,
                outer: self.name.is_none(),
            })?;
            entries.push((key, entry));
        }
        let is_tensor = entries
            .iter()
            .any(|(k, e)| k == "data" && matches!(e, Entry::Bytes(_)));
        let looks_like_tensor = entries.len() == 3
            && ["shape", "dtype", "data"]
                .iter()
                .all(|k| entries.iter().any(|(e, _)| e == k));
        if is_tensor {
            return self.tensor(entries).map(Inputs::Unnamed);
        }
        if looks_like_tensor || self.name.is_some() {
            return Err(de::Error::custom(format!(
                "{} is not a binary tensor: send {{\"shape\": [rows, ...], \"dtype\": \"f32\" or \"f64\", \"data\": <bin>}}, with data as MessagePack bin (the binary form is MessagePack only)",
                self.field()
            )));
        }
        if entries.is_empty() {
            return Err(de::Error::custom(
                "\"inputs\" is an empty map; name every input of the model",
            ));
        }
        let mut named = Vec::with_capacity(entries.len());
        for (name, entry) in entries {
            match entry {
                Entry::Rows(t) | Entry::Tensor(t) => named.push((name, t)),
                other => {
                    return Err(de::Error::custom(format!(
                        "inputs[{name:?}] is {}; a named input is rows (a list) or a binary tensor (a map)",
                        other.kind()
                    )))
                }
            }
        }
        Ok(Inputs::Named(named))
    }

    fn field(&self) -> String {
        match &self.name {
            None => "\"inputs\"".into(),
            Some(n) => format!("inputs[{n:?}]"),
        }
    }

    fn tensor<E: de::Error>(&self, entries: Vec<(String, Entry)>) -> Result<InputTensor, E> {
        let field = self.field();
        let (mut shape, mut dtype, mut data) = (None, None, None);
        for (key, entry) in entries {
            match (key.as_str(), entry) {
                ("shape", Entry::Rows(t)) => shape = Some(t),
                ("dtype", Entry::Text(s)) => dtype = Some(s),
                ("data", Entry::Bytes(b)) => data = Some(b),
                (k @ ("shape" | "dtype"), e) => {
                    return Err(E::custom(format!(
                        "{field}.{k} is {}; shape is a list of sizes, dtype \"f32\" or \"f64\"",
                        e.kind()
                    )))
                }
                (k, _) => {
                    return Err(E::custom(format!(
                        "{field} has the key {k:?}; a binary tensor has only shape, dtype and data"
                    )))
                }
            }
        }
        let missing = |k: &str| E::custom(format!("{field} is a binary tensor without {k:?}"));
        let shape = shape.ok_or_else(|| missing("shape"))?;
        let dtype = dtype.ok_or_else(|| missing("dtype"))?;
        let data = data.expect("a tensor has data");
        let dtype = match dtype.as_str() {
            "f32" => TensorDType::F32,
            "f64" => TensorDType::F64,
            other => {
                return Err(E::custom(format!(
                    "{field}.dtype is {other:?}; use \"f32\" or \"f64\""
                )))
            }
        };
        binary_tensor(&field, &shape, dtype, &data, self.limits)
    }
}

/// Builds a binary tensor after checking its declared shape against the bytes it has.
fn binary_tensor<E: de::Error>(
    field: &str,
    shape: &InputTensor,
    dtype: TensorDType,
    data: &[u8],
    limits: &Limits,
) -> Result<InputTensor, E> {
    let bad = |m: String| E::custom(format!("{field}.{m}"));
    let Values::F64(sizes) = &shape.values else {
        return Err(bad("shape must be a list of sizes".into()));
    };
    if !shape.row_shape.is_empty() || sizes.is_empty() {
        return Err(bad(format!(
            "shape must be a flat list with at least one size (the rows), got {} of shape {:?}",
            shape.rows, shape.row_shape
        )));
    }
    let mut dims = Vec::with_capacity(sizes.len());
    for (i, &s) in sizes.iter().enumerate() {
        if s < 0.0 || s.fract() != 0.0 || s > u32::MAX as f64 {
            return Err(bad(format!(
                "shape[{i}] is {s}; sizes are non-negative integers"
            )));
        }
        dims.push(s as usize);
    }
    if dims[0] > limits.max_rows {
        limits.too_many_rows.set(Some(dims[0]));
        return Err(E::custom("too many rows"));
    }
    let width = dtype.size();
    let expected = dims
        .iter()
        .try_fold(width, |n, &d| n.checked_mul(d))
        .filter(|&n| n == data.len());
    if expected.is_none() {
        return Err(bad(format!(
            "data has {} bytes but shape {dims:?} of {} needs {} ({} bytes each, little-endian, row-major)",
            data.len(),
            dtype.as_str(),
            dims.iter()
                .try_fold(width, |n, &d| n.checked_mul(d))
                .map_or("more than fits in memory".into(), |n| n.to_string()),
            width
        )));
    }
    let row_len: usize = dims[1..].iter().product();
    let non_finite = |i: usize, v: f64| {
        bad(format!(
            "data holds {v} at row {}, value {}; values must be finite numbers",
            i / row_len.max(1),
            i % row_len.max(1)
        ))
    };
    let values = match dtype {
        TensorDType::F32 => {
            let v: Vec<f32> = data
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")))
                .collect();
            if let Some(i) = v.iter().position(|x| !x.is_finite()) {
                return Err(non_finite(i, v[i] as f64));
            }
            Values::F32(v)
        }
        TensorDType::F64 => {
            let v: Vec<f64> = data
                .chunks_exact(8)
                .map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")))
                .collect();
            if let Some(i) = v.iter().position(|x| !x.is_finite()) {
                return Err(non_finite(i, v[i]));
            }
            Values::F64(v)
        }
    };
    Ok(InputTensor {
        rows: dims[0],
        row_shape: dims[1..].to_vec(),
        values,
        binary: Some(dtype),
    })
}

/// One value of an `inputs` map: rows, bytes, a string, or (at the top) a nested map.
struct EntrySeed<'a, 'k> {
    limits: &'a Limits,
    key: &'k str,
    /// True in the `inputs` map itself, where a value may be a binary tensor map.
    outer: bool,
}

impl<'de> DeserializeSeed<'de> for EntrySeed<'_, '_> {
    type Value = Entry;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Entry, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for EntrySeed<'_, '_> {
    type Value = Entry;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "inputs[{:?}] as rows, a binary tensor, or a binary tensor's shape, dtype or data",
            self.key
        )
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Entry, A::Error> {
        // A binary tensor's shape is not rows: the row limit does not apply to it (the
        // request's rows are checked once the map is understood).
        let unlimited;
        let limits = if self.key == "shape" {
            unlimited = Limits::new(usize::MAX, self.limits.max_values);
            &unlimited
        } else {
            self.limits
        };
        Nest::new(limits, Field::Named(self.key.to_owned()))
            .rows(seq)
            .map(Entry::Rows)
    }
    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Entry, E> {
        Ok(Entry::Bytes(v.to_vec()))
    }
    fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Entry, E> {
        Ok(Entry::Bytes(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Entry, E> {
        Ok(Entry::Text(v.to_owned()))
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Entry, A::Error> {
        if !self.outer {
            return Err(de::Error::custom(format!(
                "inputs[{:?}] nests a map in a binary tensor",
                self.key
            )));
        }
        let inner = MapSeed {
            limits: self.limits,
            name: Some(self.key.to_owned()),
        };
        match inner.read(map)? {
            Inputs::Unnamed(t) => Ok(Entry::Tensor(t)),
            Inputs::Named(_) => unreachable!("a named input's map is a tensor or an error"),
        }
    }
}
