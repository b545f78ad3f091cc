//! A text-embedding model behind the gateway: a real worker serving models/tiny-bert, reached
//! over HTTP through the native route (the NATS body and reply, vectors and token counts) and
//! through the Open Inference Protocol (a BYTES input, an FP32 output of one vector per text,
//! and, when asked for by name, the token counts as the INT64 output `tokens`), described by its
//! metadata as the protocol says: one input `input`, one output `output`.

use serde_json::{json, Value};

use super::*;

/// tiny-bert's hidden size: the length of each vector.
const DIM: usize = 32;

async fn text_fleet(server: &NatsServer) -> Worker {
    let model = flotilla_model::Model::load(&repo_path("models/tiny-bert")).unwrap();
    Worker::start(config(server), vec![("tiny", model)]).await
}

/// The fleet's own answer for `texts`, straight over NATS: what HTTP must agree with.
async fn over_nats(server: &NatsServer, texts: &[&str]) -> Value {
    let nats = connect(server).await;
    let reply = request(&nats, "tiny", &[], json!({"inputs": texts}).to_string()).await;
    assert_eq!(reply.error_code(), None, "{:?}", reply.json());
    reply.json()
}

fn numbers(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list: {v}"))
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn native_predict_passes_texts_and_returns_vectors_and_tokens() {
    let server = server();
    let _worker = text_fleet(&server).await;
    let gateway = Gateway::start(gateway_config(&server)).await;
    let texts = ["a", "b"];
    let want = over_nats(&server, &texts).await;

    let answer = post_json(
        &gateway.at("/models/tiny/predict"),
        &json!({"inputs": texts, "id": "t"}),
    )
    .await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(answer.header("Flotilla-Version"), Some("1"));
    let v = answer.json();
    assert_eq!(v["id"], "t");
    assert_eq!(v["model"], "tiny");
    assert_eq!(v["tokens"], json!([3, 3]));
    assert_eq!(v["tokens"], want["tokens"]);
    let outputs = v["outputs"].as_array().unwrap();
    assert_eq!(outputs.len(), 2);
    for (got, want) in outputs.iter().zip(want["outputs"].as_array().unwrap()) {
        assert_eq!(numbers(got).len(), DIM);
        assert_eq!(numbers(got), numbers(want));
    }

    // The `x` form gives `y_pred`, and numbers to a text model are the fleet's 400, unchanged.
    let one = post_json(&gateway.at("/models/tiny/predict"), &json!({"x": "a"})).await;
    assert_eq!(one.status, 200, "{:?}", one.body);
    assert_eq!(numbers(&one.json()["y_pred"]), numbers(&want["outputs"][0]));
    let wrong = post_json(
        &gateway.at("/models/tiny/predict"),
        &json!({"inputs": [[1.0, 2.0]]}),
    )
    .await;
    assert_eq!(wrong.status, 400, "{:?}", wrong.body);
    let message = wrong.json()["error"]["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(message.contains("is a text model"), "{message}");
}

#[tokio::test(flavor = "multi_thread")]
async fn kserve_infer_maps_bytes_to_texts_and_vectors_to_fp32() {
    let server = server();
    let _worker = text_fleet(&server).await;
    let gateway = Gateway::start(gateway_config(&server)).await;
    let texts = ["a", "b"];
    let want = over_nats(&server, &texts).await;

    let meta = get(&gateway.at("/v2/models/tiny")).await;
    assert_eq!(meta.status, 200, "{:?}", meta.body);
    let meta = meta.json();
    assert_eq!(meta["platform"], "flotilla_text-embedding");
    assert_eq!(
        meta["inputs"],
        json!([{"name": "input", "datatype": "BYTES", "shape": [-1]}])
    );
    assert_eq!(
        meta["outputs"],
        json!([{"name": "output", "datatype": "FP32", "shape": [-1, DIM]}]),
        "the protocol gives a text model one output"
    );

    let request = json!({
        "id": "k",
        "inputs": [{"name": "input", "shape": [2], "datatype": "BYTES", "data": texts}],
    });
    let answer = post_json(&gateway.at("/v2/models/tiny/infer"), &request).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    let v = answer.json();
    assert_eq!(
        (v["model_name"].as_str(), v["id"].as_str()),
        (Some("tiny"), Some("k"))
    );
    assert_eq!(v["model_version"], "1");
    let outputs = v["outputs"].as_array().unwrap();
    assert_eq!(
        outputs.len(),
        1,
        "only `output` unless tokens are asked for: {v}"
    );
    assert_eq!(outputs[0]["name"], "output");
    assert_eq!(outputs[0]["datatype"], "FP32");
    assert_eq!(outputs[0]["shape"], json!([2, DIM]));
    let data = numbers(&outputs[0]["data"]);
    let expected: Vec<f64> = want["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(numbers)
        .collect();
    assert_eq!(data.len(), expected.len());
    for (got, want) in data.iter().zip(&expected) {
        assert!(
            (got - want).abs() <= 1e-6,
            "{got} vs {want}: FP32 of the fleet's vector"
        );
    }
    let asked = json!({
        "inputs": [{"name": "input", "shape": [2], "datatype": "BYTES", "data": texts}],
        "outputs": [{"name": "output"}, {"name": "tokens"}],
    });
    let answer = post_json(&gateway.at("/v2/models/tiny/infer"), &asked).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(
        answer.json()["outputs"][1],
        json!({"name": "tokens", "datatype": "INT64", "shape": [2], "data": [3, 3]})
    );

    // Only the vectors when asked for them, as binary data: 2 x 32 little-endian f32.
    let binary = json!({
        "inputs": [{"name": "input", "shape": [2, 1], "datatype": "BYTES", "data": texts}],
        "outputs": [{"name": "output", "parameters": {"binary_data": true}}],
    });
    let answer = post_json(&gateway.at("/v2/models/tiny/infer"), &binary).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    let n: usize = answer
        .header("Inference-Header-Content-Length")
        .unwrap()
        .parse()
        .unwrap();
    let header: Value = serde_json::from_slice(&answer.body[..n]).unwrap();
    assert_eq!(header["outputs"].as_array().unwrap().len(), 1, "{header}");
    assert_eq!(
        header["outputs"][0]["parameters"]["binary_data_size"],
        2 * DIM * 4
    );
    let blob = &answer.body[n..];
    let first = f32::from_le_bytes(blob[..4].try_into().unwrap());
    assert_eq!(first, expected[0] as f32);

    // Tokens alone, as binary INT64.
    let tokens = json!({
        "inputs": [{"name": "input", "shape": [2], "datatype": "BYTES", "data": texts}],
        "outputs": [{"name": "tokens", "parameters": {"binary_data": true}}],
    });
    let answer = post_json(&gateway.at("/v2/models/tiny/infer"), &tokens).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    let n: usize = answer
        .header("Inference-Header-Content-Length")
        .unwrap()
        .parse()
        .unwrap();
    let blob = &answer.body[n..];
    assert_eq!(blob.len(), 16);
    assert_eq!(i64::from_le_bytes(blob[..8].try_into().unwrap()), 3);

    // Numbers to a text model: the fleet's 400 in the OIP error shape.
    let numbers_in = json!({
        "inputs": [{"name": "input", "shape": [1, 2], "datatype": "FP32", "data": [1.0, 2.0]}],
    });
    let answer = post_json(&gateway.at("/v2/models/tiny/infer"), &numbers_in).await;
    assert!(answer.oip_error(400).contains("is a text model"));
}
