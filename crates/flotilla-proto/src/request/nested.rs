//! Rows as lists: streamed straight into one flat buffer while their shape is learned from
//! the first row and every later row is checked against it. A row may be a number (a scalar
//! row), a list of numbers, a nested list (an image `[1][8][8]`), or a string (a text row).
//! Errors name the exact position (`inputs[3][0][2]`); they are formatted only when raised,
//! so the happy path allocates nothing per value.

use std::fmt;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserializer;

use super::{InputTensor, Limits, Values};

/// Where the rows sit in the body, for messages.
#[derive(Debug, Clone)]
pub(crate) enum Field {
    Inputs,
    X,
    Named(String),
}

/// The state of one list of rows being read.
pub(crate) struct Nest<'a> {
    limits: &'a Limits,
    field: Field,
    numbers: Vec<f64>,
    texts: Vec<String>,
    /// The length of the lists at each depth inside a row, learned from the first row.
    dims: Vec<Option<usize>>,
    /// The depth values sit at: 1 when rows are scalars or strings, 2 for lists of numbers.
    leaf_depth: Option<usize>,
    /// Whether the rows are strings (`Some(true)`) or numbers, once known.
    text: Option<bool>,
    /// The index at each depth of the value being read.
    path: Vec<usize>,
    /// Room to reserve for `numbers` once the first value shows the rows are numbers.
    planned: Option<usize>,
}

impl<'a> Nest<'a> {
    pub(crate) fn new(limits: &'a Limits, field: Field) -> Nest<'a> {
        Nest {
            limits,
            field,
            numbers: Vec::new(),
            texts: Vec::new(),
            dims: Vec::new(),
            leaf_depth: None,
            text: None,
            path: Vec::new(),
            planned: None,
        }
    }

    /// Where the value at the current path is, e.g. `inputs[3][0]` (for `x`, the row index
    /// is left out: `x[2]`).
    fn at(&self) -> String {
        let mut s = match &self.field {
            Field::Inputs => "inputs".to_owned(),
            Field::X => "x".to_owned(),
            Field::Named(n) => format!("inputs[{n:?}]"),
        };
        let skip = usize::from(matches!(self.field, Field::X));
        for i in self.path.iter().skip(skip) {
            s.push_str(&format!("[{i}]"));
        }
        s
    }

    /// The same position in the first row, for "... but inputs[0][1] ..." messages.
    fn first_row_at(&self, depth: usize) -> String {
        let saved = self.path.clone();
        let mut first = Nest::new(self.limits, self.field.clone());
        first.path = vec![0; depth.min(saved.len())];
        first.at()
    }

    /// Plans the room to reserve for the values, once, before the first: from the list's
    /// length when the format gives it (MessagePack: 8 values per row), else (JSON) from the
    /// body's size, as a number and its separator take at least two bytes and typically four
    /// or more. Bounded, so a large body still grows its buffer as values actually arrive.
    /// Reserved at the first number, so rows of text reserve nothing.
    fn reserve_hint(&mut self, hint: Option<usize>) {
        if self.planned.is_none() && self.numbers.capacity() == 0 {
            let hint = hint.map_or(self.limits.max_values / 4, |rows| rows.saturating_mul(8));
            self.planned = Some(hint.min(self.limits.max_values).min(1 << 16));
        }
    }

    fn number<E: de::Error>(&mut self, v: f64) -> Result<(), E> {
        let depth = self.path.len();
        if self.leaf_depth != Some(depth) || self.text == Some(true) {
            self.first_leaf(depth, false)?;
            if let Some(room) = self.planned.take() {
                self.numbers.reserve(room);
            }
        }
        if !v.is_finite() {
            return Err(E::custom(format!(
                "{} is {v}; values must be finite numbers",
                self.at()
            )));
        }
        self.numbers.push(v);
        Ok(())
    }

    fn string<E: de::Error>(&mut self, v: &str) -> Result<(), E> {
        let depth = self.path.len();
        if depth != 1 {
            return Err(self.not_a_number(format_args!("the string {}", crate::headers::shown(v))));
        }
        if self.leaf_depth != Some(1) || self.text != Some(true) {
            self.first_leaf(1, true)?;
        }
        self.texts.push(v.to_owned());
        Ok(())
    }

    /// Checks a value's depth and type against the rows read so far, or learns them.
    fn first_leaf<E: de::Error>(&mut self, depth: usize, text: bool) -> Result<(), E> {
        match (self.leaf_depth, self.text) {
            (None, None) => {
                // Lists already read at this depth (in empty rows before this one, or empty
                // lists earlier in this row) make this value the wrong shape: `[[], 5]` and
                // `[[[]], [1]]` decoded as two rows holding one value (found by fuzzing).
                if self.dims.get(depth - 1).is_some_and(Option::is_some) {
                    let what = if text { "a string" } else { "a number" };
                    return Err(E::custom(format!(
                        "{} is {what} where {} is a list; every row must have the same shape",
                        self.at(),
                        self.first_row_at(depth)
                    )));
                }
                self.leaf_depth = Some(depth);
                self.text = Some(text);
                Ok(())
            }
            (Some(d), Some(t)) if d == depth && t == text => Ok(()),
            (Some(d), Some(t)) => {
                let what = |text: bool, depth: usize| match (text, depth) {
                    (true, _) => "a string".to_owned(),
                    (false, 1) => "a number".to_owned(),
                    (false, d) => format!("a list nested {} deep", d - 1),
                };
                Err(E::custom(format!(
                    "{} holds {} where {} holds {}; every row must have the same shape (numbers sent to a text model, or strings to a numeric one, are refused)",
                    self.at_row(),
                    what(text, depth),
                    self.first_row_at(1),
                    what(t, d),
                )))
            }
            _ => unreachable!("leaf depth and text are learned together"),
        }
    }

    fn at_row(&self) -> String {
        let mut row = Nest::new(self.limits, self.field.clone());
        row.path = self.path.iter().take(1).copied().collect();
        row.at()
    }

    fn not_a_number<E: de::Error>(&self, what: impl fmt::Display) -> E {
        E::custom(format!("{} is {what}, not a number", self.at()))
    }

    /// Checks the length of a finished list at depth `depth` (the row itself is depth 1).
    fn list_len<E: de::Error>(&mut self, depth: usize, len: usize) -> Result<(), E> {
        let i = depth - 1;
        if self.dims.len() <= i {
            self.dims.resize(i + 1, None);
        }
        match self.dims[i] {
            None => {
                self.dims[i] = Some(len);
                Ok(())
            }
            Some(n) if n == len => Ok(()),
            Some(n) => Err(E::custom(format!(
                "{} has {len} values but {} has {n}; rows must all be the same shape",
                self.at(),
                self.first_row_at(depth)
            ))),
        }
    }

    /// Reads the rows of `inputs` (depth 0), stopping with a 413 past `max_rows`.
    pub(crate) fn rows<'de, A: SeqAccess<'de>>(
        mut self,
        mut seq: A,
    ) -> Result<InputTensor, A::Error> {
        self.reserve_hint(seq.size_hint());
        let mut rows = 0usize;
        loop {
            if rows == self.limits.max_rows {
                // Past the limit, only count the rest (skipping allocates nothing), so the
                // 413 can say how many rows came.
                let mut extra = 0usize;
                while seq.next_element::<IgnoredAny>()?.is_some() {
                    extra += 1;
                }
                if extra > 0 {
                    self.limits.too_many_rows.set(Some(rows + extra));
                    return Err(de::Error::custom("too many rows"));
                }
                break;
            }
            self.path.clear();
            self.path.push(rows);
            if seq.next_element_seed(Elem(&mut self))?.is_none() {
                break;
            }
            rows += 1;
        }
        Ok(self.finish(rows))
    }

    /// Reads the one row of `x`.
    pub(crate) fn one_row<'de, D: Deserializer<'de>>(
        mut self,
        d: D,
    ) -> Result<InputTensor, D::Error> {
        self.path.push(0);
        Elem(&mut self).deserialize(d)?;
        Ok(self.finish(1))
    }

    fn finish(self, rows: usize) -> InputTensor {
        let leaf = self.leaf_depth.unwrap_or(0);
        let row_shape: Vec<usize> = self
            .dims
            .iter()
            .take(leaf.saturating_sub(1))
            .map(|d| d.unwrap_or(0))
            .collect();
        let values = if self.text == Some(true) {
            Values::Text(self.texts)
        } else {
            Values::F64(self.numbers)
        };
        // Rows that are all empty lists hold no value at all: zero values per row.
        let row_shape = if self.leaf_depth.is_none() && rows > 0 {
            vec![0]
        } else {
            row_shape
        };
        InputTensor {
            rows,
            row_shape,
            values,
            binary: None,
        }
    }
}

/// One value at depth `path.len()`: a number, a string (a text row) or a list.
struct Elem<'n, 'a>(&'n mut Nest<'a>);

impl<'de> DeserializeSeed<'de> for Elem<'_, '_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Elem<'_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{} as a number or a list of numbers", self.0.at())
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        self.0.number(v)
    }
    fn visit_f32<E: de::Error>(self, v: f32) -> Result<(), E> {
        self.0.number(v as f64)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.0.number(v as f64)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.0.number(v as f64)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        self.0.string(v)
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
        Err(self.0.not_a_number(v))
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Err(self.0.not_a_number("null"))
    }
    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        Err(self.0.not_a_number("null"))
    }
    fn visit_bytes<E: de::Error>(self, _: &[u8]) -> Result<(), E> {
        Err(self
            .0
            .not_a_number("binary data (a binary tensor is a map with shape, dtype and data)"))
    }
    fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        Err(self.0.not_a_number("a map"))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let nest = self.0;
        let depth = nest.path.len();
        if nest.leaf_depth.is_some_and(|leaf| depth >= leaf) || nest.text == Some(true) {
            return Err(de::Error::custom(format!(
                "{} is a list where {} is not; every row must have the same shape",
                nest.at(),
                nest.first_row_at(depth)
            )));
        }
        if depth == 1 {
            nest.reserve_hint(seq.size_hint());
        }
        nest.path.push(0);
        let mut len = 0usize;
        loop {
            nest.path[depth] = len;
            if seq.next_element_seed(Elem(&mut *nest))?.is_none() {
                break;
            }
            len += 1;
        }
        nest.path.pop();
        nest.list_len(depth, len)
    }
}
