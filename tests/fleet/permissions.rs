//! The least-privilege users of `deploy/nats/permissions.conf` (issue 8, items 7-9): every
//! role runs under its own user with its own inbox prefix, predictions and a publish work end
//! to end, and what a role must not do is refused by the server.

use std::time::Duration;

use flotilla_proto::{Client, NatsConfig};
use flotilla_registry::{Promote, Registry, RegistryConfig};
use tokio::sync::mpsc;

use crate::support::*;

const PASSWORD: &str = "flotilla-test-password";

/// The shipped permissions, with every password set, and `extra` users appended to the
/// users list (for tests of what a user without some permission sees).
fn config_text(extra_users: &str) -> String {
    let shipped = std::fs::read_to_string(repo_path("deploy/nats/permissions.conf")).unwrap();
    let shipped = if extra_users.is_empty() {
        shipped
    } else {
        // The users list ends with the last `]` of the file.
        let end = shipped.rfind(']').expect("a users list");
        format!("{}{extra_users}\n{}", &shipped[..end], &shipped[end..])
    };
    let vars: String = [
        "NATS_PASSWORD_WORKER_FILES",
        "NATS_PASSWORD_WORKER_REGISTRY",
        "NATS_PASSWORD_CLIENT",
        "NATS_PASSWORD_OPERATOR",
    ]
    .iter()
    .map(|v| format!("{v}: \"{PASSWORD}\"\n"))
    .collect();
    format!("{vars}{shipped}")
}

fn start(extra_users: &str) -> NatsServer {
    NatsServer::start_with_config(&config_text(extra_users))
        .expect("nats-server must be on PATH and accept deploy/nats/permissions.conf")
}

/// `[nats]` settings for one role: its user and its own inbox prefix.
fn as_user(server: &NatsServer, user: &str) -> NatsConfig {
    NatsConfig {
        url: server.url(),
        user: Some(user.into()),
        password: Some(PASSWORD.into()),
        inbox_prefix: Some(format!("_INBOX_{user}")),
        ..NatsConfig::default()
    }
}

/// A connection as `user` whose server errors (permission violations) arrive on the receiver.
async fn watched(
    server: &NatsServer,
    user: &str,
    inbox_prefix: &str,
) -> (async_nats::Client, mpsc::UnboundedReceiver<String>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let client = async_nats::ConnectOptions::with_user_and_password(user.into(), PASSWORD.into())
        .custom_inbox_prefix(inbox_prefix)
        .event_callback(move |event| {
            let tx = tx.clone();
            async move {
                if let async_nats::Event::ServerError(e) = event {
                    let _ = tx.send(e.to_string());
                }
            }
        })
        .connect(server.url())
        .await
        .unwrap();
    (client, rx)
}

/// Waits for a server error mentioning `needle`.
async fn violation(errors: &mut mpsc::UnboundedReceiver<String>, needle: &str) -> String {
    tokio::time::timeout(WAIT, async {
        loop {
            let e = errors.recv().await.expect("connection still open");
            if e.contains(needle) {
                return e;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no permissions violation mentioning {needle:?}"))
}

fn iris_bytes(file: &str) -> Vec<u8> {
    std::fs::read(repo_path(&format!("models/{file}.json"))).unwrap()
}

#[tokio::test]
async fn every_role_works_under_its_own_user_and_no_further() {
    let server = start("");

    // The operator creates the buckets and publishes the first version.
    let operator = as_user(&server, "flotilla-operator");
    let registry = Registry::open(
        operator.connect("operator").await.unwrap(),
        &RegistryConfig::default(),
    )
    .await
    .expect("the operator user opens (and creates) the registry");
    let first = registry
        .publish(
            "iris",
            &iris_bytes("iris"),
            Default::default(),
            None,
            Promote::Always,
        )
        .await
        .expect("the operator user publishes");

    // A worker following the registry, and one serving a file, each under its user.
    let mut following = config(&server);
    following.nats = as_user(&server, "flotilla-worker-registry");
    let registry_worker = Worker::follow(following, "*").await;
    let mut files = config(&server);
    files.nats = as_user(&server, "flotilla-worker-files");
    let file_worker = Worker::start(files, vec![("linear", example_model("linear"))]).await;

    // A client under its user gets answers from both.
    let client = Client::new(
        as_user(&server, "flotilla-client")
            .connect("client")
            .await
            .unwrap(),
    );
    wait_answering(&client, "iris", 4).await;
    let p = client
        .predict("iris", &[vec![5.1, 3.5, 1.4, 0.2]])
        .await
        .unwrap();
    assert_eq!(p.version, first.version);
    let want = reference_forward(&example_json("iris"), &[5.1, 3.5, 1.4, 0.2]);
    assert_close(&p.outputs[0], &want, "iris under least privilege");
    let p = client.predict("linear", &[vec![1.0; 10]]).await.unwrap();
    let want = reference_forward(&example_json("linear"), &[1.0; 10]);
    assert_close(&p.outputs[0], &want, "linear under least privilege");

    // A new version published by the operator reaches the worker through the watch.
    let second = registry
        .publish(
            "iris",
            &iris_bytes("mlp"),
            Default::default(),
            None,
            Promote::Always,
        )
        .await
        .unwrap();
    tokio::time::timeout(WAIT, async {
        loop {
            let p = client
                .predict("iris", &[vec![5.1, 3.5, 1.4, 0.2]])
                .await
                .unwrap();
            if p.version == second.version {
                let want = reference_forward(&example_json("mlp"), &[5.1, 3.5, 1.4, 0.2]);
                assert_close(&p.outputs[0], &want, "the new version");
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the registry worker never served the new version");

    // The client user cannot listen to predict subjects: the server refuses the subscription
    // and nothing arrives on it while requests flow.
    let (snoop, mut errors) = watched(&server, "flotilla-client", "_INBOX_flotilla-client").await;
    let mut requests = snoop.subscribe("flotilla.predict.>").await.unwrap();
    let e = violation(&mut errors, "flotilla.predict.>").await;
    assert!(e.to_lowercase().contains("permissions violation"), "{e}");
    // Nor to another user's replies.
    let mut replies = snoop.subscribe("_INBOX_flotilla-operator.>").await.unwrap();
    violation(&mut errors, "_INBOX_flotilla-operator.>").await;
    for _ in 0..5 {
        client.predict("linear", &[vec![1.0; 10]]).await.unwrap();
        registry.require("iris").await.unwrap();
    }
    let quiet = tokio::time::timeout(Duration::from_millis(300), async {
        tokio::select! {
            m = futures::StreamExt::next(&mut requests) => m.map(|m| m.subject.to_string()),
            m = futures::StreamExt::next(&mut replies) => m.map(|m| m.subject.to_string()),
        }
    })
    .await;
    assert!(
        matches!(quiet, Err(_) | Ok(None)),
        "a client read someone else's traffic: {quiet:?}"
    );

    // Nor publish outside its subjects: writing a manifest is refused.
    snoop
        .publish("$KV.flotilla-manifests.iris", "{}".into())
        .await
        .unwrap();
    violation(&mut errors, "$KV.flotilla-manifests.iris").await;

    // A file worker's user cannot publish anything but replies.
    let (worker_conn, mut worker_errors) = watched(
        &server,
        "flotilla-worker-files",
        "_INBOX_flotilla-worker-files",
    )
    .await;
    worker_conn
        .publish("flotilla.predict.iris", "{}".into())
        .await
        .unwrap();
    violation(&mut worker_errors, "flotilla.predict.iris").await;

    // A registry worker's user cannot write either bucket.
    let (follower_conn, mut follower_errors) = watched(
        &server,
        "flotilla-worker-registry",
        "_INBOX_flotilla-worker-registry",
    )
    .await;
    follower_conn
        .publish("$O.flotilla-models.C.x", "x".into())
        .await
        .unwrap();
    violation(&mut follower_errors, "$O.flotilla-models.C.x").await;

    // The client still works under its user after all those refusals.
    client
        .predict("iris", &[vec![5.1, 3.5, 1.4, 0.2]])
        .await
        .unwrap();
    // Dropped, not stopped: a graceful stop of an idle worker is issue 8, item 6, tested
    // elsewhere; permissions play no part in it.
    drop((file_worker, registry_worker));
}

/// Issue 8, item 7: with per-user inbox permissions, a client left on the default `_INBOX`
/// prefix gets no replies, so a deployment that forgets the prefix fails loudly, not leaks.
#[tokio::test]
async fn a_client_on_the_shared_inbox_is_refused() {
    let server = start("");
    let mut files = config(&server);
    files.nats = as_user(&server, "flotilla-worker-files");
    let worker = Worker::start(files, vec![("linear", example_model("linear"))]).await;
    let (nats, mut errors) = watched(&server, "flotilla-client", "_INBOX").await;
    let client = Client::new(nats);
    let answer = tokio::time::timeout(
        Duration::from_secs(3),
        client.predict("linear", &[vec![1.0; 10]]),
    )
    .await;
    assert!(
        !matches!(answer, Ok(Ok(_))),
        "a reply arrived on the shared inbox"
    );
    violation(&mut errors, "_INBOX.").await;
    drop(worker);
}

/// Issue 8, item 9: a user that may not ask for stream info gets an error that says
/// permission, not "timed out", and the registry does not go on to try creating the stream.
#[tokio::test]
async fn a_denied_stream_info_is_reported_as_such_and_creates_nothing() {
    let no_info = r#"
    {
      user: flotilla-no-stream-info
      password: $NATS_PASSWORD_CLIENT
      permissions: {
        publish: { allow: ["$JS.API.INFO"] }
        subscribe: { allow: ["_INBOX_flotilla-no-stream-info.>"] }
      }
    }"#;
    let server = start(no_info);
    // The buckets exist: only the permission is missing.
    Registry::open(
        as_user(&server, "flotilla-operator")
            .connect("operator")
            .await
            .unwrap(),
        &RegistryConfig::default(),
    )
    .await
    .unwrap();
    let (nats, mut errors) = watched(
        &server,
        "flotilla-no-stream-info",
        "_INBOX_flotilla-no-stream-info",
    )
    .await;
    let err = tokio::time::timeout(WAIT, Registry::open(nats, &RegistryConfig::default()))
        .await
        .expect("Registry::open came back")
        .err()
        .expect("opening without stream info permission fails");
    let text = err.to_string();
    let lower = text.to_lowercase();
    assert!(
        lower.contains("permission") || lower.contains("authoriz"),
        "the error does not say permission: {text}"
    );
    assert!(
        !lower.contains("timed out"),
        "reported as a timeout: {text}"
    );
    assert!(
        text.contains("$JS.API.STREAM.INFO.KV_flotilla-manifests"),
        "the error does not name the denied subject: {text}"
    );
    // Every violation the server reported: none may be an attempt to create a stream.
    let mut seen = Vec::new();
    while let Ok(Some(e)) = tokio::time::timeout(Duration::from_millis(300), errors.recv()).await {
        seen.push(e);
    }
    assert!(
        seen.iter().all(|e| !e.contains("STREAM.CREATE")),
        "the registry tried to create a stream it may not even read: {seen:?}"
    );
}

/// Found while fuzzing manifests (issue 8): a worker verified signatures with the manifest's
/// own `model`, not the key it read it from. Anyone who may write the manifest bucket (a
/// leaked operator credential) could store `wine`'s manifest under `iris` and have workers
/// that trust only signed versions serve a version signed for `wine` to callers of `iris`.
#[tokio::test]
async fn a_manifest_naming_another_model_is_refused() {
    let server = server();
    let registry = Registry::open(connect(&server).await, &RegistryConfig::default())
        .await
        .unwrap();
    let key = flotilla_registry::signing::generate();
    let publish = |model: &'static str, file: &'static str| {
        let (registry, key) = (registry.clone(), key.clone());
        async move {
            registry
                .publish(
                    model,
                    &iris_bytes(file),
                    Default::default(),
                    Some(&key),
                    Promote::Always,
                )
                .await
                .unwrap()
        }
    };
    publish("iris", "iris").await;
    // Two versions of wine, so its current is a version number iris has not loaded.
    publish("wine", "mlp").await;
    publish("wine", "mlp").await;
    let mut cfg = config(&server);
    cfg.registry.trusted_keys = vec![flotilla_registry::signing::public_hex(&key.verifying_key())];
    let worker = Worker::follow(cfg, "iris").await;
    let client = Client::new(connect(&server).await);
    let row = [5.1, 3.5, 1.4, 0.2];
    assert_eq!(
        client
            .predict("iris", &[row.to_vec()])
            .await
            .unwrap()
            .version,
        1
    );

    // Write wine's manifest, signed versions and all, under iris.
    let js = async_nats::jetstream::new(connect(&server).await);
    let kv = js.get_key_value("flotilla-manifests").await.unwrap();
    let wine = kv.get("wine").await.unwrap().unwrap();
    kv.put("iris", wine).await.unwrap();

    // Until the worker has read and refused it, every answer must still be iris's own.
    let failed = "flotilla_model_load_failures_total{model=\"iris\",reason=\"manifest\"} 1";
    let want = reference_forward(&example_json("iris"), &row);
    let check = |p: flotilla_proto::Prediction| {
        assert_eq!(
            p.version, 1,
            "iris callers were served wine's version {}",
            p.version
        );
        assert_close(&p.outputs[0], &want, "iris is still iris");
    };
    tokio::time::timeout(WAIT, async {
        while !worker.metrics.render().contains(failed) {
            check(client.predict("iris", &[row.to_vec()]).await.unwrap());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the foreign manifest was not counted as a bad manifest");
    for _ in 0..20 {
        check(client.predict("iris", &[row.to_vec()]).await.unwrap());
    }
}
