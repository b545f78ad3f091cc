//! `flotilla models` as an operator runs it: the real binary against a per-test nats-server,
//! checking both the tables and the `--json` shapes documented in `docs/registry.md`.

use std::path::Path;
use std::process::Output;

use flotilla_registry::{signing, Registry, RegistryConfig};
use serde_json::Value;

use crate::support::*;

pub async fn flotilla(args: &[&str]) -> Output {
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .args(args)
        .output();
    tokio::time::timeout(WAIT, run)
        .await
        .unwrap_or_else(|_| panic!("flotilla {args:?} did not finish"))
        .unwrap()
}

/// `flotilla models ARGS --nats URL` against one server.
pub struct Models {
    url: String,
}

impl Models {
    pub fn new(server: &NatsServer) -> Models {
        Models { url: server.url() }
    }

    pub async fn run(&self, args: &[&str]) -> Output {
        let mut all = vec!["models"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--nats", &self.url]);
        flotilla(&all).await
    }

    /// Stdout of a command that must succeed.
    pub async fn ok(&self, args: &[&str]) -> String {
        succeeded(args, self.run(args).await)
    }

    /// Stdout of a `--json` command, parsed.
    pub async fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.push("--json");
        let stdout = self.ok(&all).await;
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{args:?}: {e}: {stdout}"))
    }

    /// Stderr of a command that must fail.
    pub async fn fails(&self, args: &[&str]) -> String {
        failed(args, self.run(args).await)
    }
}

pub fn succeeded(args: &[&str], out: Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{args:?} failed: {stderr}");
    String::from_utf8(out.stdout).unwrap()
}

pub fn failed(args: &[&str], out: Output) -> String {
    assert!(
        !out.status.success(),
        "{args:?} succeeded: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.starts_with("error: "), "{stderr}");
    stderr
}

pub fn iris() -> String {
    repo_path("models/iris.json").display().to_string()
}

pub fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[tokio::test]
async fn keygen_writes_a_private_key_and_refuses_to_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("keys");
    let args = ["models", "keygen", "--out", path(&out_dir)];
    let stdout = succeeded(&args, flotilla(&args).await);

    let (key_file, pub_file) = (out_dir.join("flotilla.key"), out_dir.join("flotilla.pub"));
    let key = signing::read_signing_key(&key_file).unwrap();
    let public = signing::public_hex(&key.verifying_key());
    assert_eq!(std::fs::read_to_string(&pub_file).unwrap().trim(), public);
    assert_eq!(
        signing::parse_public_key(path(&pub_file)).unwrap(),
        key.verifying_key(),
        "workers accept the .pub file as a trusted key"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key_file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the secret key is private");
    }
    assert!(stdout.contains(&public), "{stdout}");
    assert!(
        stdout.contains(&format!("FLOTILLA_REGISTRY_TRUSTED_KEYS='[\"{public}\"]'")),
        "{stdout}"
    );

    let stderr = failed(&args, flotilla(&args).await);
    assert!(
        stderr.contains("refusing to overwrite") && stderr.contains("flotilla.key"),
        "{stderr}"
    );
    assert_eq!(
        signing::read_signing_key(&key_file).unwrap().to_bytes(),
        key.to_bytes(),
        "the existing key is untouched"
    );

    let args = [
        "models",
        "keygen",
        "--out",
        path(&out_dir),
        "--name",
        "ops",
        "--json",
    ];
    let v: Value = serde_json::from_str(&succeeded(&args, flotilla(&args).await)).unwrap();
    assert_eq!(v["secret_key_file"], path(&out_dir.join("ops.key")));
    assert_eq!(
        v["public_key"].as_str().unwrap(),
        std::fs::read_to_string(out_dir.join("ops.pub"))
            .unwrap()
            .trim()
    );
}

#[tokio::test]
async fn publish_then_list_show_and_history() {
    let server = server();
    let models = Models::new(&server);
    let iris = iris();

    let stdout = models.ok(&["list"]).await;
    assert!(stdout.contains("no models"), "{stdout}");
    assert_eq!(models.json(&["list"]).await, serde_json::json!([]));

    let stdout = models.ok(&["publish", "iris", &iris]).await;
    assert!(
        stdout.contains("iris: published version 1") && stdout.contains("promoted"),
        "{stdout}"
    );
    let v = models
        .json(&["publish", "iris", &iris, "--promote", "never"])
        .await;
    assert_eq!(v["version"], 2);
    assert_eq!(v["promoted"], false);
    assert!(v["reason"].as_str().unwrap().contains("never"), "{v}");
    assert_eq!(v["sha256"].as_str().unwrap().len(), 64);
    assert_eq!(v["signer"], Value::Null);

    let stdout = models.ok(&["list"]).await;
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        lines[0].starts_with("MODEL") && lines[0].contains("METRIC"),
        "{stdout}"
    );
    let cells: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(cells[..5], ["iris", "1", "-", "2", "2"], "{stdout}");
    assert!(lines[1].contains("accuracy 0.9667"), "{stdout}");
    let v = models.json(&["list"]).await;
    assert_eq!(v[0]["model"], "iris");
    assert_eq!(v[0]["current"], 1);
    assert_eq!(v[0]["canary"], Value::Null);
    assert_eq!(
        (v[0]["versions"].as_u64(), v[0]["latest"].as_u64()),
        (Some(2), Some(2))
    );
    assert_eq!(v[0]["metric"]["name"], "accuracy");
    assert!((v[0]["metric"]["value"].as_f64().unwrap() - 0.966667).abs() < 1e-9);

    let stdout = models.ok(&["show", "iris"]).await;
    assert!(stdout.starts_with("iris: current 1"), "{stdout}");
    let row = |v: &str| {
        stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(v))
            .unwrap_or_else(|| panic!("no version {v} in {stdout}"))
            .to_owned()
    };
    assert!(
        row("1").contains("current") && row("1").contains("unsigned"),
        "{stdout}"
    );
    assert!(!row("2").contains("current"), "{stdout}");
    let v = models.json(&["show", "iris"]).await;
    assert_eq!(v["model"], "iris");
    assert_eq!(v["current"], 1);
    assert_eq!(v["latest"], 2);
    assert_eq!(v["previous"], serde_json::json!([]));
    let versions = v["versions"].as_array().unwrap();
    assert_eq!(versions.len(), 2);
    assert_eq!(versions[0]["version"], 1);
    assert_eq!(versions[0]["state"], "current");
    assert_eq!(versions[1]["state"], Value::Null);
    assert_eq!(versions[0]["signer"], Value::Null);
    assert!(versions[0]["object"].as_str().unwrap().starts_with("iris/"));
    assert_ne!(
        versions[0]["object"], versions[1]["object"],
        "every publish stores its own object"
    );
    assert!(versions[0]["size"].as_u64().unwrap() > 0);
    assert!(versions[0]["metrics"]["accuracy"].as_f64().is_some());

    let stdout = models.ok(&["history", "iris"]).await;
    assert!(stdout.contains("Manifest changes"), "{stdout}");
    assert!(
        stdout.contains("published 1, current none -> 1"),
        "{stdout}"
    );
    assert!(stdout.contains("published 2"), "{stdout}");
    let v = models.json(&["history", "iris"]).await;
    assert_eq!(v["model"], "iris");
    let versions = v["versions"].as_array().unwrap();
    assert_eq!(versions.len(), 2);
    assert_eq!(versions[0]["state"], "current");
    assert!(versions[1]["created"].as_str().unwrap().ends_with('Z'));
    let changes = v["changes"].as_array().unwrap();
    assert_eq!(changes.len(), 2, "{v}");
    assert!(changes[0]["revision"].as_u64() < changes[1]["revision"].as_u64());
    assert_eq!(changes[1]["current"], 1);
    assert_eq!(changes[1]["latest"], 2);
    assert_eq!(changes[1]["change"], "published 2");
}

#[tokio::test]
async fn promote_rollback_and_canary_change_the_manifest() {
    let server = server();
    let models = Models::new(&server);
    let iris = iris();
    for _ in 0..3 {
        models
            .ok(&["publish", "iris", &iris, "--promote", "always"])
            .await;
    }

    assert_eq!(
        models.ok(&["promote", "iris", "1"]).await.trim(),
        "iris: current 3 -> 1"
    );
    // The stack is now [1, 2, 3]: a plain rollback returns to 3.
    assert_eq!(
        models.ok(&["rollback", "iris"]).await.trim(),
        "iris: current 1 -> 3"
    );
    let v = models.json(&["rollback", "iris", "--to", "1"]).await;
    assert_eq!(v["model"], "iris");
    assert_eq!(v["before"]["current"], 3);
    assert_eq!(v["after"]["current"], 1);
    assert_eq!(v["change"], "current 3 -> 1");

    assert_eq!(
        models
            .ok(&["canary", "iris", "2", "--weight", "0.25"])
            .await
            .trim(),
        "iris: canary none -> 2@0.25"
    );
    let v = models.json(&["show", "iris"]).await;
    assert_eq!(
        v["canary"],
        serde_json::json!({"version": 2, "weight": 0.25})
    );
    assert_eq!(v["versions"][1]["state"], "canary");
    let stdout = models.ok(&["show", "iris"]).await;
    assert!(stdout.contains("canary 25%"), "{stdout}");

    for weight in ["0", "1.5", "-0.5"] {
        let stderr = models
            .fails(&["canary", "iris", "3", "--weight", weight])
            .await;
        assert!(
            stderr.contains("canary weight must be in (0, 1]"),
            "{stderr}"
        );
    }
    let stderr = models
        .fails(&["canary", "iris", "1", "--weight", "0.5"])
        .await;
    assert!(stderr.contains("already current"), "{stderr}");
    let stderr = models.fails(&["canary", "iris", "3"]).await;
    assert!(stderr.contains("--weight"), "{stderr}");
    let stderr = models.fails(&["canary", "iris", "3", "--clear"]).await;
    assert!(stderr.contains("cannot be used with"), "{stderr}");

    let v = models.json(&["canary", "iris", "--clear"]).await;
    assert_eq!(v["before"]["canary"]["version"], 2);
    assert_eq!(v["after"]["canary"], Value::Null);
    assert_eq!(v["change"], "canary 2@0.25 -> none");
    assert_eq!(models.json(&["show", "iris"]).await["canary"], Value::Null);

    let v = models.json(&["history", "iris"]).await;
    let changes: Vec<&str> = v["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["change"].as_str().unwrap())
        .collect();
    assert_eq!(
        changes[3..],
        [
            "current 3 -> 1",
            "current 1 -> 3",
            "current 3 -> 1",
            "canary none -> 2@0.25",
            "canary 2@0.25 -> none"
        ]
    );
}

#[tokio::test]
async fn errors_say_what_exists() {
    let server = server();
    let models = Models::new(&server);
    let iris = iris();
    models.ok(&["publish", "iris", &iris]).await;
    models.ok(&["publish", "wine", &iris]).await;

    for args in [
        &["show", "nope"][..],
        &["history", "nope"],
        &["promote", "nope", "1"],
        &["rollback", "nope"],
    ] {
        let stderr = models.fails(args).await;
        assert!(
            stderr.contains("no model \"nope\"") && stderr.contains("iris, wine"),
            "{args:?}: {stderr}"
        );
    }
    let stderr = models.fails(&["promote", "iris", "9"]).await;
    assert!(
        stderr.contains("no version 9") && stderr.contains("it has 1"),
        "{stderr}"
    );
    assert_eq!(
        stderr.matches("no version 9").count(),
        1,
        "the cause is printed once: {stderr}"
    );
    let stderr = models.fails(&["rollback", "iris", "--to", "7"]).await;
    assert!(stderr.contains("no version 7"), "{stderr}");
    let stderr = models.fails(&["rollback", "iris"]).await;
    assert!(stderr.contains("no earlier current version"), "{stderr}");

    let dir = tempfile::tempdir().unwrap();
    let mut artifact = example_json("iris");
    artifact["layers"][0]["activation"] = "swish".into();
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, serde_json::to_vec(&artifact).unwrap()).unwrap();
    let stderr = models.fails(&["publish", "iris", path(&bad)]).await;
    assert!(
        stderr.contains("layers[0].activation") && stderr.contains("swish"),
        "{stderr}"
    );
    let stderr = models
        .fails(&["publish", "iris", path(&dir.path().join("absent.json"))])
        .await;
    assert!(stderr.contains("absent.json"), "{stderr}");
    assert_eq!(
        models.json(&["show", "iris"]).await["latest"],
        1,
        "refused artifacts take no version"
    );
}

#[tokio::test]
async fn a_signed_publish_records_its_signer() {
    let server = server();
    let models = Models::new(&server);
    let dir = tempfile::tempdir().unwrap();
    let args = ["models", "keygen", "--out", path(dir.path()), "--json"];
    let keys: Value = serde_json::from_str(&succeeded(&args, flotilla(&args).await)).unwrap();
    let public = keys["public_key"].as_str().unwrap();
    let key_file = keys["secret_key_file"].as_str().unwrap();

    let stdout = models
        .ok(&["publish", "iris", &iris(), "--signing-key", key_file])
        .await;
    assert!(
        stdout.contains(&format!("signed by {}", &public[..12])),
        "{stdout}"
    );
    let v = models.json(&["show", "iris"]).await;
    assert_eq!(v["versions"][0]["signer"], public);
    assert_eq!(v["versions"][0]["signature_valid"], true);
    let stdout = models.ok(&["show", "iris"]).await;
    assert!(
        stdout.contains(&public[..12]) && !stdout.contains("unsigned"),
        "{stdout}"
    );

    // Issue 8, item 15: a manifest can name any signer. Forge one: the real public key with a
    // signature over another hash. `show` must not say "signed by" for it.
    let registry = Registry::open(connect(&server).await, &RegistryConfig::default())
        .await
        .unwrap();
    let forged = signing::sign(&signing::generate(), "iris", &"0".repeat(64)).0;
    registry
        .update("iris", false, |m| {
            let info = m.versions.get_mut(&1).unwrap();
            info.signature = Some(forged.clone());
            info.signer = Some(public.to_owned());
            Ok(())
        })
        .await
        .unwrap();
    let v = models.json(&["show", "iris"]).await;
    assert_eq!(v["versions"][0]["signature_valid"], false);
    let stdout = models.ok(&["show", "iris"]).await;
    assert!(stdout.contains("BAD SIGNATURE"), "{stdout}");

    let stderr = models
        .fails(&[
            "publish",
            "iris",
            &iris(),
            "--signing-key",
            &keys["public_key_file"]
                .as_str()
                .unwrap()
                .replace(".pub", ".nope"),
        ])
        .await;
    assert!(stderr.contains("flotilla.nope"), "{stderr}");
}

/// Issue 8, item 10: the first command to touch the registry created its buckets with its own
/// replica count. `models init` creates them as asked and reports existing ones; a count that
/// differs from the one asked for is said, and exits 1.
#[tokio::test]
async fn init_creates_the_buckets_and_reports_replicas() {
    let server = server();
    let models = Models::new(&server);
    let v = models.json(&["init", "--replicas", "1"]).await;
    let buckets = v["buckets"].as_array().unwrap();
    assert_eq!(buckets.len(), 2, "{v}");
    assert!(
        buckets
            .iter()
            .all(|b| b["created"] == true && b["replicas"] == 1),
        "{v}"
    );
    let again = models.json(&["init"]).await;
    assert!(
        again["buckets"]
            .as_array()
            .unwrap()
            .iter()
            .all(|b| b["created"] == false),
        "{again}"
    );
    // A single server cannot hold 3 replicas, so the existing 1-replica buckets stand and
    // the mismatch is reported.
    let out = models.run(&["init", "--replicas", "3"]).await;
    assert!(!out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("but 3 were asked for"), "{stdout}");
    assert!(
        stdout.contains("nats stream edit KV_flotilla-manifests"),
        "{stdout}"
    );
}
