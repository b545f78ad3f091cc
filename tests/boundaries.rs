//! The workspace's dependency boundaries (issue 6): what each library crate must not depend on,
//! checked on the real dependency graph with `cargo tree`, so a careless `use` that drags the
//! CLI or the trainer into a Rust caller's build fails here.

use std::process::Command;

/// Each library crate and the crates it must never depend on (normal dependencies).
const FORBIDDEN: &[(&str, &[&str])] = &[
    (
        "flotilla-proto",
        &[
            "clap",
            "plotters",
            "indicatif",
            "ndarray",
            "rayon",
            "nix",
            "tract-onnx",
            "tokenizers",
            "flotilla-model",
        ],
    ),
    (
        "flotilla-model",
        &[
            "async-nats",
            "tokio",
            "clap",
            "plotters",
            "indicatif",
            "flotilla-proto",
        ],
    ),
    (
        "flotilla-registry",
        &["clap", "plotters", "indicatif", "rayon"],
    ),
    ("flotilla-worker", &["clap", "plotters", "indicatif"]),
    ("flotilla-train", &["async-nats", "tokio", "clap"]),
    (
        "flotilla-gateway",
        &[
            "clap",
            "plotters",
            "indicatif",
            "rayon",
            "ndarray",
            "flotilla-model",
            "tract-onnx",
        ],
    ),
];

fn dependencies(krate: &str) -> Vec<String> {
    let out = Command::new(env!("CARGO"))
        .args([
            "tree",
            "--offline",
            "-e",
            "normal",
            "--prefix",
            "none",
            "-p",
            krate,
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("running cargo tree");
    assert!(
        out.status.success(),
        "cargo tree -p {krate}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}

#[test]
fn library_crates_keep_their_dependency_boundaries() {
    for (krate, forbidden) in FORBIDDEN {
        let deps = dependencies(krate);
        assert!(deps.iter().any(|d| d == krate), "{krate}: {deps:?}");
        let found: Vec<_> = forbidden
            .iter()
            .filter(|f| deps.iter().any(|d| d == *f))
            .collect();
        assert!(found.is_empty(), "{krate} depends on {found:?}");
    }
    // The checks can fail: the binary does depend on what the libraries must not.
    assert!(dependencies("flotilla").iter().any(|d| d == "clap"));
}
