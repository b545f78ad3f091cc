//! A request's inputs against a model's [`Signature`]: the checks that make a request a 400
//! at admission (names, row counts, per-row shapes, numbers vs text, integer inputs), and the
//! row-wise concatenation of a batch's requests into one tensor per model input, in the
//! model's dtype.
//!
//! The model kind never shows here: a dense model is one f64 input, an ONNX model any number
//! of f32/f64/i64 inputs, a text model one string input. Nothing checked here can fail at
//! concatenation, so a batch is assembled without a per-request error path.

use std::fmt;

use flotilla_model::{DType, Data, Model, Signature, Tensor, TensorSpec};
use flotilla_proto::{InputTensor, Inputs, PredictRequest, ServiceError, Values};

/// Integers above this lose precision as f64 (the form JSON numbers are read in).
const MAX_EXACT_INT: f64 = 9_007_199_254_740_992.0;

/// A request's tensor for one model input, with what to call it in messages.
type Pair<'r> = (Field<'r>, &'r InputTensor);

/// [`paired`]'s answer: one pair held inline for the common one-input request, so checking
/// and assembling it allocate nothing.
enum Pairs<'r> {
    One(Pair<'r>),
    Many(Vec<Pair<'r>>),
}

impl<'r> std::ops::Deref for Pairs<'r> {
    type Target = [Pair<'r>];

    fn deref(&self) -> &[Pair<'r>] {
        match self {
            Pairs::One(pair) => std::slice::from_ref(pair),
            Pairs::Many(pairs) => pairs,
        }
    }
}

/// The request's tensor for each model input, in the model's order.
fn paired<'r>(
    request: &'r PredictRequest,
    signature: &Signature,
    name: &str,
) -> Result<Pairs<'r>, ServiceError> {
    let specs = &signature.inputs;
    match &request.inputs {
        Inputs::Unnamed(t) if specs.len() == 1 => {
            let field = if request.single { "x" } else { "inputs" };
            Ok(Pairs::One((Field::Top(field), t)))
        }
        Inputs::Unnamed(_) => Err(ServiceError::bad_request(format!(
            "model {name:?} has {} inputs ({}); send \"inputs\" as a map from input name to rows",
            specs.len(),
            describe(specs)
        ))),
        Inputs::Named(named) => {
            if let Some((extra, _)) = named
                .iter()
                .find(|(n, _)| !specs.iter().any(|s| s.name == *n))
            {
                return Err(ServiceError::bad_request(format!(
                    "model {name:?} has no input {extra:?}; its inputs are {}",
                    describe(specs)
                )));
            }
            specs
                .iter()
                .map(|spec| {
                    named
                        .iter()
                        .find(|(n, _)| *n == spec.name)
                        .map(|(n, t)| (Field::Named(n), t))
                        .ok_or_else(|| {
                            ServiceError::bad_request(format!(
                                "\"inputs\" has no input {:?}; model {name:?} needs every one of {}",
                                spec.name,
                                describe(specs)
                            ))
                        })
                })
                .collect::<Result<_, _>>()
                .map(Pairs::Many)
        }
    }
}

/// Where in the request an input was found, as an error message names it: `x`, `inputs` or
/// `inputs["name"]`. Written only when a message is, so checking a good request allocates
/// nothing for it.
#[derive(Debug, Clone, Copy)]
enum Field<'r> {
    Top(&'static str),
    Named(&'r str),
}

impl fmt::Display for Field<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Field::Top(name) => f.write_str(name),
            Field::Named(name) => write!(f, "inputs[{name:?}]"),
        }
    }
}

/// An input as an error message names it: `input "a" of model "m"` for a model with several
/// inputs, else `model "m"`.
struct InputName<'a> {
    spec: &'a str,
    model: &'a str,
    named: bool,
}

impl fmt::Display for InputName<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.named {
            write!(f, "input {:?} of model {:?}", self.spec, self.model)
        } else {
            write!(f, "model {:?}", self.model)
        }
    }
}

/// `a [-1, 3] f32, b [-1, 2] f32`.
fn describe(specs: &[TensorSpec]) -> String {
    specs
        .iter()
        .map(|s| format!("{:?} {:?} {}", s.name, s.batch_shape(), s.dtype))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Checks that `request` fits `model`: every input present and no other, the same number of
/// rows in each, rows of the input's per-row shape (nested, or flat with as many values),
/// numbers for numeric inputs and strings for text ones, integers for integer inputs.
pub(crate) fn check(
    request: &PredictRequest,
    model: &Model,
    name: &str,
) -> Result<(), ServiceError> {
    let signature = model.signature();
    let pairs = paired(request, signature, name)?;
    let rows = pairs[0].1.rows;
    for ((field, t), spec) in pairs.iter().zip(&signature.inputs) {
        if t.rows != rows {
            return Err(ServiceError::bad_request(format!(
                "{field} has {} rows but {} has {rows}; every input needs the same number of rows",
                t.rows, pairs[0].0
            )));
        }
        check_one(*field, t, spec, name, signature.inputs.len() > 1)?;
    }
    Ok(())
}

fn check_one(
    field: Field<'_>,
    t: &InputTensor,
    spec: &TensorSpec,
    model: &str,
    named: bool,
) -> Result<(), ServiceError> {
    let input = InputName {
        spec: &spec.name,
        model,
        named,
    };
    match (t.values.is_text(), spec.dtype.is_numeric()) {
        (true, true) => {
            return Err(ServiceError::bad_request(format!(
                "{field} holds strings but {input} takes numbers ({} rows of shape {:?}); strings are for text models",
                spec.dtype, spec.shape
            )))
        }
        (false, false) => {
            return Err(ServiceError::bad_request(format!(
                "{field} holds numbers but {input} is a text model: send strings, e.g. {{\"inputs\": [\"first text\", \"second\"]}}"
            )))
        }
        _ => {}
    }
    let flat = t.row_shape.len() <= 1 && t.row_len() == spec.row_len();
    if t.row_shape.is_empty() && !flat && !t.values.is_text() {
        let first = match field {
            Field::Top("x") => "x".to_owned(),
            _ => format!("{field}[0]"),
        };
        return Err(ServiceError::bad_request(format!(
            "{first} is one number, but {input} expects rows of shape {:?} ({} values): send each row as a list",
            spec.shape,
            spec.row_len()
        )));
    }
    if t.row_shape != spec.shape && !flat {
        return Err(ServiceError::bad_request(
            if spec.shape.len() == 1 && t.row_shape.len() == 1 {
                format!(
                    "{field} has {} features per row; {input} expects {}",
                    t.row_len(),
                    spec.row_len()
                )
            } else {
                format!(
                "{field} rows have shape {:?} ({} values); {input} expects rows of shape {:?} ({} values), nested like that or flat",
                t.row_shape,
                t.row_len(),
                spec.shape,
                spec.row_len()
            )
            },
        ));
    }
    let row_len = spec.row_len().max(1);
    let out_of_range = |i: usize, v: f64, why: &str| {
        ServiceError::bad_request(format!(
            "{field} row {} value {} is {v}; {input} takes {} ({why})",
            i / row_len,
            i % row_len,
            spec.dtype
        ))
    };
    let check_values = |values: &mut dyn Iterator<Item = f64>| -> Result<(), ServiceError> {
        for (i, v) in values.enumerate() {
            match spec.dtype {
                DType::I64 if v.fract() != 0.0 || v.abs() > MAX_EXACT_INT => {
                    return Err(out_of_range(i, v, "integers"));
                }
                DType::F32 if v.abs() > f32::MAX as f64 => {
                    return Err(out_of_range(i, v, "out of the f32 range"));
                }
                _ => {}
            }
        }
        Ok(())
    };
    match (&t.values, spec.dtype) {
        (Values::F64(v), DType::I64 | DType::F32) => check_values(&mut v.iter().copied()),
        (Values::F32(v), DType::I64) => check_values(&mut v.iter().map(|&x| x as f64)),
        _ => Ok(()),
    }
}

/// Concatenates the requests' inputs row-wise into one tensor per model input, converting
/// values to the input's dtype. Every request has been [`check`]ed against `model`.
pub(crate) fn assemble(model: &Model, requests: &[&PredictRequest], rows: usize) -> Vec<Tensor> {
    let signature = model.signature();
    let pairs: Vec<Pairs<'_>> = requests
        .iter()
        .map(|r| paired(r, signature, "").expect("checked at admission"))
        .collect();
    signature
        .inputs
        .iter()
        .enumerate()
        .map(|(i, spec)| {
            let mut data = Data::with_capacity(spec.dtype, rows * spec.row_len());
            for pair in &pairs {
                append(&mut data, &pair[i].1.values);
            }
            Tensor::new(rows, spec.shape.clone(), data)
        })
        .collect()
}

/// Appends request values to a batch buffer of the model's dtype.
fn append(out: &mut Data, values: &Values) {
    match (out, values) {
        (Data::F64(o), Values::F64(v)) => o.extend_from_slice(v),
        (Data::F64(o), Values::F32(v)) => o.extend(v.iter().map(|&x| x as f64)),
        (Data::F32(o), Values::F32(v)) => o.extend_from_slice(v),
        (Data::F32(o), Values::F64(v)) => o.extend(v.iter().map(|&x| x as f32)),
        (Data::I64(o), Values::F64(v)) => o.extend(v.iter().map(|&x| x as i64)),
        (Data::I64(o), Values::F32(v)) => o.extend(v.iter().map(|&x| x as i64)),
        (Data::String(o), Values::Text(v)) => o.extend_from_slice(v),
        _ => unreachable!("numbers and text were checked against the input's dtype"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_proto::Encoding;

    fn onnx(name: &str) -> Model {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(format!("../../models/onnx/{name}.onnx"));
        Model::load(&path).unwrap()
    }

    fn request(body: &str) -> PredictRequest {
        PredictRequest::decode(Encoding::Json, body.as_bytes()).unwrap()
    }

    fn refusal(model: &Model, body: &str) -> String {
        let e = check(&request(body), model, "m").unwrap_err();
        assert_eq!(e.kind.code(), 400, "{body}");
        e.message
    }

    #[test]
    fn nested_and_flat_rows_fit_a_per_row_shape() {
        let cnn = onnx("cnn");
        let nested = format!(
            "{{\"inputs\": [[[{}]]]}}",
            ["[0,1,2,3,4,5,6,7]"; 8].join(",")
        );
        check(&request(&nested), &cnn, "cnn").unwrap();
        let flat = format!("{{\"x\": [{}]}}", ["0.5"; 64].join(","));
        check(&request(&flat), &cnn, "cnn").unwrap();
        let wrong = format!(
            "{{\"inputs\": [[[{}]]]}}",
            ["[0,1,2,3,4,5,6,7]"; 7].join(",")
        );
        let msg = refusal(&cnn, &wrong);
        assert!(msg.contains("expects rows of shape [1, 8, 8]"), "{msg}");
        let batch = assemble(&cnn, &[&request(&nested), &request(&flat)], 2);
        assert_eq!(batch[0].shape(), [2, 1, 8, 8]);
        assert_eq!(batch[0].data.dtype(), DType::F32);
    }

    #[test]
    fn named_inputs_must_all_be_there_with_as_many_rows() {
        let two = onnx("two_inputs");
        check(
            &request(r#"{"inputs": {"a": [[1,2,3]], "b": [[4,5]]}}"#),
            &two,
            "t",
        )
        .unwrap();
        for (body, want) in [
            (
                r#"{"inputs": [[1,2,3,4,5]]}"#,
                "has 2 inputs (\"a\" [-1, 3] f32, \"b\" [-1, 2] f32)",
            ),
            (r#"{"inputs": {"a": [[1,2,3]]}}"#, "has no input \"b\""),
            (
                r#"{"inputs": {"a": [[1,2,3]], "b": [[4,5]], "c": [[1]]}}"#,
                "no input \"c\"",
            ),
            (
                r#"{"inputs": {"a": [[1,2,3], [1,2,3]], "b": [[4,5]]}}"#,
                "inputs[\"b\"] has 1 rows but inputs[\"a\"] has 2",
            ),
        ] {
            let msg = refusal(&two, body);
            assert!(msg.contains(want), "{body}: {msg}");
        }
    }

    #[test]
    fn dtypes_are_checked_numbers_vs_text_and_integers() {
        let ints = onnx("int_input");
        check(&request(r#"{"inputs": [[1, 2, -3, 4]]}"#), &ints, "i").unwrap();
        let msg = refusal(&ints, r#"{"inputs": [[1, 2.5, 3, 4]]}"#);
        assert!(
            msg.contains("row 0 value 1 is 2.5") && msg.contains("i64"),
            "{msg}"
        );
        let msg = refusal(&ints, r#"{"inputs": ["some text"]}"#);
        assert!(
            msg.contains("holds strings but model \"m\" takes numbers"),
            "{msg}"
        );
        let mlp = onnx("mlp");
        let msg = refusal(&mlp, r#"{"x": [1e300]}"#);
        assert!(msg.contains("features per row"), "{msg}");
        let big = format!("{{\"x\": [1e300{}]}}", ", 0".repeat(63));
        let msg = refusal(&mlp, &big);
        assert!(msg.contains("out of the f32 range"), "{msg}");
        let batch = assemble(&ints, &[&request(r#"{"inputs": [[1, 2, -3, 4]]}"#)], 1);
        assert_eq!(batch[0].data, Data::I64(vec![1, 2, -3, 4]));
    }
}
