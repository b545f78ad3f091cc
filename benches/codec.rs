//! JSON against MessagePack on the wire: decoding a predict request (`PredictRequest::decode`,
//! which also checks every value) and encoding a reply, for a one-row request and a 256-row
//! batch-sized one.
//!
//! Values are full-precision pseudo-random floats, as a client sending float64 features
//! writes them: the expensive case for JSON, whose numbers are text.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use flotilla_proto::{
    Encoding, Inputs, Label, OutputsRef, PredictReply, PredictRequest, Values, ValuesRef, YPred,
};

/// (name, rows, features) of each request size.
const REQUESTS: [(&str, usize, usize); 2] = [("1x10", 1, 10), ("256x64", 256, 64)];
/// (name, rows, outputs, classifier) of each reply size.
const REPLIES: [(&str, usize, usize, bool); 2] = [("1x1", 1, 1, false), ("256x10", 256, 10, true)];

const ENCODINGS: [(&str, Encoding); 2] = [("json", Encoding::Json), ("msgpack", Encoding::MsgPack)];

/// Deterministic values in `[-1, 1)` from a 64-bit LCG, so every run encodes the same bytes.
fn values(n: usize, seed: u64) -> Vec<f64> {
    let mut state = seed;
    (0..n)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
        })
        .collect()
}

fn decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("decode_request");
    for (size, rows, features) in REQUESTS {
        let matrix: Vec<Vec<f64>> = values(rows * features, 1)
            .chunks(features)
            .map(<[f64]>::to_vec)
            .collect();
        for (name, encoding) in ENCODINGS {
            let body = PredictRequest::encode(encoding, &matrix, Some("bench"));
            let decoded = PredictRequest::decode(encoding, &body).expect("a valid request");
            let Inputs::Unnamed(input) = &decoded.inputs else {
                panic!("one unnamed input")
            };
            assert_eq!(
                (input.rows, input.row_shape.as_slice()),
                (rows, &[features][..])
            );
            let Values::F64(got) = &input.values else {
                panic!("numbers")
            };
            // MessagePack carries the f64 bits. serde_json without its `float_roundtrip`
            // feature parses some shortest-repr floats one ulp off, hence a tolerance.
            for (got, want) in got.iter().zip(matrix.concat()) {
                assert!(
                    (got - want).abs() <= f64::EPSILON * want.abs(),
                    "{name} round trip: {got} != {want}"
                );
                if encoding == Encoding::MsgPack {
                    assert_eq!(got.to_bits(), want.to_bits(), "{name} round trip");
                }
            }
            group.throughput(Throughput::Bytes(body.len() as u64));
            group.bench_with_input(BenchmarkId::new(name, size), &body, |b, body| {
                b.iter(|| PredictRequest::decode(encoding, black_box(body)))
            });
        }
    }
    group.finish();
}

fn encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode_reply");
    for (size, rows, outputs, classifier) in REPLIES {
        let block = values(rows * outputs, 2);
        let labels: Vec<Label> = (0..rows as i64).map(|i| Label::Index(i % 10)).collect();
        let row_shape = [outputs];
        let reply = PredictReply {
            outputs: OutputsRef {
                values: ValuesRef::F64(&block),
                rows,
                row_shape: &row_shape,
                binary: None,
            },
            labels: classifier.then_some(&labels[..]),
            model: "bench",
            version: 1,
            id: Some("bench"),
            // The one-row case is the `x` form, whose reply also carries `y_pred`.
            y_pred: (rows == 1).then(|| YPred {
                values: ValuesRef::F64(&block),
                row_shape: &row_shape,
            }),
            extras: Vec::new(),
        };
        for (name, encoding) in ENCODINGS {
            let bytes = encoding.encode(&reply).expect("a reply encodes").len();
            group.throughput(Throughput::Bytes(bytes as u64));
            group.bench_with_input(BenchmarkId::new(name, size), &reply, |b, reply| {
                b.iter(|| encoding.encode(black_box(reply)))
            });
        }
    }
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30)
}

criterion_group! {
    name = benches;
    config = config();
    targets = decode, encode
}
criterion_main!(benches);
