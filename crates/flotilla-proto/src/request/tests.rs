use serde::Serialize;

use super::*;

fn json(body: &str) -> Result<PredictRequest, ServiceError> {
    PredictRequest::decode(Encoding::Json, body.as_bytes())
}

fn unnamed(r: &PredictRequest) -> &InputTensor {
    match &r.inputs {
        Inputs::Unnamed(t) => t,
        Inputs::Named(_) => panic!("named inputs"),
    }
}

#[test]
fn decodes_inputs_and_x() {
    let r = json(r#"{"inputs": [[1, 2.5], [3, -4]], "id": "a"}"#).unwrap();
    let t = unnamed(&r);
    assert_eq!(t.values, Values::F64(vec![1.0, 2.5, 3.0, -4.0]));
    assert_eq!((t.rows, t.row_shape.as_slice()), (2, &[2][..]));
    assert_eq!(r.id.as_deref(), Some("a"));
    assert_eq!(r.reply_form(), None);
    let x = json(r#"{"x": [1, 2, 3]}"#).unwrap();
    assert!(x.single);
    assert_eq!(
        (unnamed(&x).rows, unnamed(&x).row_shape.as_slice()),
        (1, &[3][..])
    );
}

#[test]
fn nested_rows_keep_their_shape() {
    let r = json(r#"{"inputs": [[[1, 2], [3, 4], [5, 6]], [[7, 8], [9, 10], [11, 12]]]}"#).unwrap();
    let t = unnamed(&r);
    assert_eq!((t.rows, t.row_shape.as_slice()), (2, &[3, 2][..]));
    assert_eq!(t.values.len(), 12);
    // Scalar rows, text rows, and one text or scalar as x.
    let r = json(r#"{"inputs": [1, 2, 3]}"#).unwrap();
    assert_eq!((unnamed(&r).rows, unnamed(&r).row_shape.len()), (3, 0));
    let r = json(r#"{"inputs": ["first text", ""]}"#).unwrap();
    assert_eq!(
        unnamed(&r).values,
        Values::Text(vec!["first text".into(), String::new()])
    );
    let r = json(r#"{"x": "one text"}"#).unwrap();
    assert!(r.single && unnamed(&r).values.is_text());
    let r = json(r#"{"x": 2.5}"#).unwrap();
    assert_eq!(unnamed(&r).values, Values::F64(vec![2.5]));
}

#[test]
fn errors_name_the_position() {
    let cases = [
        (
            r#"{"inputs": [[1, 2], [3]]}"#,
            "inputs[1] has 1 values but inputs[0] has 2",
        ),
        (r#"{"inputs": [[1, "NaN"]]}"#, "inputs[0][1]"),
        (r#"{"x": [1, true]}"#, "x[1] is true"),
        (r#"{"inputs": []}"#, "empty"),
        (r#"{"rows": [[1]]}"#, "neither"),
        (
            r#"{"inputs": [[[1, 2]], [[3]]]}"#,
            "inputs[1][0] has 1 values but inputs[0][0] has 2",
        ),
        (
            r#"{"inputs": [[1, 2], [[3], 4]]}"#,
            "inputs[1][0] is a list",
        ),
        (
            r#"{"inputs": [[1, 2], "text"]}"#,
            "inputs[1] holds a string where inputs[0] holds",
        ),
        (r#"{"inputs": ["text", [1]]}"#, "inputs[1] is a list"),
        (r#"{"inputs": [[], []]}"#, "empty"),
        (
            r#"{"inputs": {"a": [[1]], "b": 3}}"#,
            "expected inputs[\"b\"] as rows",
        ),
        (
            r#"{"inputs": {"a": [[1]], "b": "text"}}"#,
            "a named input is rows",
        ),
        (
            r#"{"inputs": {"shape": [1, 2], "dtype": "f32", "data": [1, 2]}}"#,
            "MessagePack only",
        ),
        (
            r#"{"inputs": {"a": [[1, "x"]]}}"#,
            "inputs[\"a\"][0][1] is the string \"x\"",
        ),
    ];
    for (body, want) in cases {
        let e = json(body).unwrap_err();
        assert_eq!(e.kind, ErrorKind::BadRequest, "{body}");
        assert!(e.message.contains(want), "{body}: {}", e.message);
    }
    assert!(json("").unwrap_err().message.contains("empty body"));
}

#[test]
fn named_inputs_are_decoded_by_name() {
    let r = json(r#"{"inputs": {"a": [[1, 2, 3]], "b": [[4, 5]]}}"#).unwrap();
    let Inputs::Named(named) = &r.inputs else {
        panic!("named")
    };
    let names: Vec<&str> = named.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["a", "b"]);
    assert_eq!(named[1].1.row_shape, [2]);
    assert_eq!(r.rows(), 1);
}

fn binary(shape: &[usize], dtype: &str, data: Vec<u8>) -> Vec<u8> {
    #[derive(Serialize)]
    struct T<'a> {
        shape: &'a [usize],
        dtype: &'a str,
        #[serde(with = "serde_bytes_like")]
        data: Vec<u8>,
    }
    mod serde_bytes_like {
        pub fn serialize<S: serde::Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(v)
        }
    }
    #[derive(Serialize)]
    struct B<'a> {
        inputs: T<'a>,
    }
    rmp_serde::to_vec_named(&B {
        inputs: T { shape, dtype, data },
    })
    .unwrap()
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

#[test]
fn binary_tensors_keep_their_dtype_and_shape() {
    let values: Vec<f32> = (0..2 * 64).map(|i| i as f32 / 10.0).collect();
    let body = PredictRequest::encode_binary_f32(2, &[1, 8, 8], &values, Some("b"));
    let r = PredictRequest::decode(Encoding::MsgPack, &body).unwrap();
    let t = unnamed(&r);
    assert_eq!((t.rows, t.row_shape.as_slice()), (2, &[1, 8, 8][..]));
    assert_eq!(t.values, Values::F32(values));
    assert_eq!(r.reply_form(), Some(TensorDType::F32));
    assert_eq!(r.id.as_deref(), Some("b"));
    let f64s: Vec<u8> = [1.5f64, -2.0]
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    let r = PredictRequest::decode(Encoding::MsgPack, &binary(&[1, 2], "f64", f64s)).unwrap();
    assert_eq!(unnamed(&r).values, Values::F64(vec![1.5, -2.0]));
    assert_eq!(r.reply_form(), Some(TensorDType::F64));
}

/// A binary tensor's declared shape is checked against the bytes it has before anything
/// is allocated for it: a shape of four billion rows in a few bytes is refused, not obeyed.
#[test]
fn a_binary_tensor_never_trusts_its_declared_shape() {
    let two = f32_bytes(&[1.0, 2.0]);
    let cases: Vec<(Vec<usize>, &str, Vec<u8>, &str)> = vec![
        (
            vec![1, 3],
            "f32",
            two.clone(),
            "data has 8 bytes but shape [1, 3] of f32 needs 12",
        ),
        (vec![4_000_000_000, 1 << 31], "f32", two.clone(), "needs"),
        (vec![1, 2], "f16", two.clone(), "dtype is \"f16\""),
        (
            vec![1, 2],
            "f32",
            f32_bytes(&[1.0, f32::NAN]),
            "row 0, value 1",
        ),
        (vec![], "f32", two.clone(), "at least one size"),
    ];
    for (shape, dtype, data, want) in cases {
        let e =
            PredictRequest::decode(Encoding::MsgPack, &binary(&shape, dtype, data)).unwrap_err();
        assert_eq!(e.kind, ErrorKind::BadRequest, "{shape:?}: {}", e.message);
        assert!(e.message.contains(want), "{shape:?}: {}", e.message);
    }
    let body = binary(&[5, 1], "f32", f32_bytes(&[1.0; 5]));
    let e = PredictRequest::decode_limited(Encoding::MsgPack, &body, 4).unwrap_err();
    assert_eq!(e.kind, ErrorKind::TooLarge, "{}", e.message);
    let body = binary(&[3_000_000_000, 1], "f32", two);
    let e = PredictRequest::decode_limited(Encoding::MsgPack, &body, 1024).unwrap_err();
    assert_eq!(e.kind, ErrorKind::TooLarge, "{}", e.message);
    // A bin header that claims four gigabytes in a ten-byte body.
    let mut claim = vec![0x81, 0xa6];
    claim.extend_from_slice(b"inputs");
    claim.extend_from_slice(&[0x81, 0xa4]);
    claim.extend_from_slice(b"data");
    claim.extend_from_slice(&[0xc6, 0xff, 0xff, 0xff, 0xff, 1, 2]);
    assert!(PredictRequest::decode(Encoding::MsgPack, &claim).is_err());
}

/// Issue 8, item 1: `81 a6 "inputs" dd ff ff ff ff` declares a four-billion-element array
/// in ten bytes; decoding it must not reserve memory from that length.
#[test]
fn a_declared_length_is_never_trusted() {
    let mut body = vec![0x81, 0xa6];
    body.extend_from_slice(b"inputs");
    body.extend_from_slice(&[0xdd, 0xff, 0xff, 0xff, 0xff]);
    let e = PredictRequest::decode(Encoding::MsgPack, &body).unwrap_err();
    assert_eq!(e.kind, ErrorKind::BadRequest, "{}", e.message);
    // The same inside a row, and a row count over the limit answers 413 early.
    let mut body = vec![0x81, 0xa6];
    body.extend_from_slice(b"inputs");
    body.extend_from_slice(&[0x91, 0xdd, 0xff, 0xff, 0xff, 0xff]);
    assert!(PredictRequest::decode(Encoding::MsgPack, &body).is_err());
    let rows = vec![vec![1.0]; 5];
    let body = PredictRequest::encode(Encoding::MsgPack, &rows, None);
    let e = PredictRequest::decode_limited(Encoding::MsgPack, &body, 4).unwrap_err();
    assert_eq!(e.kind, ErrorKind::TooLarge, "{}", e.message);
    let e = PredictRequest::decode_limited(Encoding::Json, br#"{"inputs": [[1],[2],[3]]}"#, 2)
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::TooLarge, "{}", e.message);
    assert!(PredictRequest::decode_limited(Encoding::Json, br#"{"inputs": [[1],[2]]}"#, 2).is_ok());
    // Named inputs are limited too.
    let e =
        PredictRequest::decode_limited(Encoding::Json, br#"{"inputs": {"a": [[1],[2],[3]]}}"#, 2)
            .unwrap_err();
    assert_eq!(e.kind, ErrorKind::TooLarge, "{}", e.message);
}

#[test]
fn msgpack_non_finite_is_refused() {
    #[derive(Serialize)]
    struct B {
        inputs: Vec<Vec<f64>>,
    }
    let body = rmp_serde::to_vec_named(&B {
        inputs: vec![vec![1.0, f64::INFINITY]],
    })
    .unwrap();
    let e = PredictRequest::decode(Encoding::MsgPack, &body).unwrap_err();
    assert!(e.message.contains("inputs[0][1] is inf"), "{}", e.message);
}

/// Found by `scripts/fuzz.sh` (request-json): a string in a row, or a body that is one long
/// string, came back whole in the error message, so a 1 MB body got a reply with the same
/// megabyte in a header and again in the body (over NATS's max_payload: never delivered).
#[test]
fn an_error_never_echoes_a_long_input() {
    let long = "[".repeat(5000);
    let body = format!(r#"{{"inputs": [[1, "{long}"]]}}"#);
    let e = json(&body).unwrap_err();
    assert!(
        e.message.len() < 400,
        "{} bytes: {}",
        e.message.len(),
        e.message
    );
    assert!(
        e.message.contains("inputs[0][1] is the string"),
        "{}",
        e.message
    );
    let body = format!(r#""{long}""#);
    let e = PredictRequest::decode(Encoding::Json, body.as_bytes()).unwrap_err();
    assert!(
        e.message.len() < 400,
        "{} bytes: {}",
        e.message.len(),
        e.message
    );
    let mut body = vec![0xda, 0x13, 0x88];
    body.extend_from_slice(long.as_bytes());
    let e = PredictRequest::decode(Encoding::MsgPack, &body).unwrap_err();
    assert!(
        e.message.len() < 400,
        "{} bytes: {}",
        e.message.len(),
        e.message
    );
}

/// Issue 8, fuzzing (request-json, seed 0x5eed, input 12247): a row of empty lists before a
/// row of numbers, or an empty list beside a number, decoded to a request whose values did not
/// fill its rows (`[[], 5]` was two rows holding one value). Every accepted request's values
/// must fill rows x row shape exactly.
#[test]
fn values_always_fill_their_rows() {
    for body in [
        // The fuzzer's input as found: one row of shape [3] holding two values.
        r#"{"id":"req-7","x":[[[]],-0.0,1e+300]}"#,
        r#"{"inputs": [[], 5]}"#,
        r#"{"inputs": [[], [], 5, 6]}"#,
        r#"{"inputs": [[[]], [1]]}"#,
        r#"{"inputs": [[[], 1]]}"#,
        r#"{"inputs": [[[[]]], [[1]]]}"#,
        r#"{"inputs": [[], "text"]}"#,
        r#"{"x": [[], 1]}"#,
        r#"{"inputs": {"a": [[], 5]}}"#,
    ] {
        let e = json(body).expect_err(body);
        assert_eq!(e.kind, ErrorKind::BadRequest, "{body}: {}", e.message);
        assert!(e.message.contains("same shape"), "{body}: {}", e.message);
    }
    for body in [
        r#"{"inputs": [[1, 2], [3, 4]]}"#,
        r#"{"inputs": [[[1], [2]], [[3], [4]]]}"#,
        r#"{"inputs": [5, 6]}"#,
        r#"{"x": [[1, 2]]}"#,
        r#"{"inputs": {"a": [[1], [2]], "b": ["t", "u"]}}"#,
    ] {
        let r = json(body).expect(body);
        for (name, t) in r.inputs.tensors() {
            assert_eq!(t.values.len(), t.rows * t.row_len(), "{body} {name:?}");
        }
    }
}
