//! `scripts/check_tritonclient.py` drives a live gateway with `tritonclient.http`, the client
//! Triton and KServe users already have. It needs the Python environment `scripts/venv.sh`
//! makes; without it this test fails (a skipped check would pass unnoticed in CI).

use std::path::PathBuf;

use super::*;

/// `$FLOTILLA_VENV/bin/python`, the venv defaulting to `.venv` in the repository.
fn venv_python() -> PathBuf {
    let venv = std::env::var_os("FLOTILLA_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(".venv"));
    let venv = if venv.is_absolute() {
        venv
    } else {
        repo_path(".").join(venv)
    };
    let python = venv.join("bin/python");
    assert!(
        python.exists(),
        "{} is missing: run `bash scripts/venv.sh` (it installs scripts/requirements-gateway.txt \
         into .venv, or into $FLOTILLA_VENV when set) before the tests",
        python.display()
    );
    python
}

#[tokio::test]
async fn tritonclient_drives_the_gateway() {
    let python = venv_python();
    let server = server();
    let _worker = Worker::start(
        config(&server),
        vec![
            ("iris", example_model("iris")),
            ("linear", example_model("linear")),
        ],
    )
    .await;
    let mut cfg = gateway_config(&server);
    cfg.default_model = Some("iris".into());
    let gateway = Gateway::start(cfg).await;
    let address = gateway.url.trim_start_matches("http://").to_owned();
    let run = tokio::process::Command::new(&python)
        .arg(repo_path("scripts/check_tritonclient.py"))
        .args(["--url", &address, "--models-dir"])
        .arg(repo_path("models"))
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(WAIT * 3, run)
        .await
        .expect("check_tritonclient.py did not finish")
        .expect("running check_tritonclient.py");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "check_tritonclient.py failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    assert!(stdout.contains("all checks passed"), "{stdout}");
}
