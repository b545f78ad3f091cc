//! `fetch`: one version out of the registry and onto disk, verified exactly as a worker verifies
//! it before loading ([`Registry::load_with_progress`]: size, SHA-256, and the signature when
//! keys are trusted). A dense or ONNX version is written as one file; a text model's archive is
//! unpacked into a directory holding the files the archive index names and nothing else. Either
//! appears whole or not at all: nothing existing is overwritten, and a failure leaves no part.

use std::fs;
use std::io::Write;

use anyhow::{bail, Context};
use flotilla_model::text::files::Files;
use flotilla_model::Kind;

use super::format::*;
use super::*;
use crate::cli::progress::Transfer;

/// `fetch --json`.
#[derive(Debug, Serialize)]
struct FetchOutput {
    model: String,
    version: u64,
    kind: String,
    sha256: String,
    size: u64,
    /// Hex public key the manifest says signed the version; null when unsigned.
    signer: Option<String>,
    /// Whether the signature was checked against trusted keys (with none, only the checksum).
    signature_verified: bool,
    /// The file or directory written.
    path: PathBuf,
    /// A text model's files inside `path`, in name order; empty for a single file.
    files: Vec<String>,
}

pub(super) async fn fetch(args: FetchArgs) -> anyhow::Result<()> {
    let mut settings = args.common.nats.settings()?;
    settings.registry.trusted_keys.extend(args.trusted_keys);
    let trusted = settings
        .registry
        .trusted()
        .context("--trusted-key or registry.trusted_keys")?;
    // Refused before anything is downloaded: a 90 MB transfer that cannot be written is waste.
    check_free(&args.out)?;
    let client = settings.nats.connect("flotilla-models").await?;
    let registry = Registry::open(client, &settings.registry).await?;
    let (manifest, _) = registry.require(&args.model).await?;
    let version = match args.version.or(manifest.current) {
        Some(v) => v,
        None => bail!(
            "model {:?} has no current version; name one with --version",
            args.model
        ),
    };
    let Some(info) = manifest.versions.get(&version) else {
        let held: Vec<u64> = manifest.versions.keys().copied().collect();
        bail!(
            "model {:?} has no version {version}; it has {}",
            args.model,
            join(&held)
        );
    };
    let kind = Kind::parse(&info.kind).with_context(|| {
        format!(
            "model {:?} version {version} is a {:?} model, which this flotilla does not know",
            args.model, info.kind
        )
    })?;
    let shown = Transfer::new(format!("downloading {}", args.model), info.size);
    let bytes = registry
        .load_with_progress(&args.model, version, info, &trusted, &|done, total| {
            shown.update(done, total)
        })
        .await?;
    drop(shown);
    let out = args.out.clone();
    let files = tokio::task::spawn_blocking(move || match kind {
        Kind::TextEmbedding => unpack(&bytes, &out),
        Kind::Dense | Kind::Onnx => write_file(&bytes, &out).map(|()| Vec::new()),
    })
    .await??;
    let output = FetchOutput {
        model: args.model,
        version,
        kind: info.kind.clone(),
        sha256: info.sha256.clone(),
        size: info.size,
        signer: info.signer.clone(),
        signature_verified: !trusted.is_empty(),
        path: args.out,
        files,
    };
    if args.common.json {
        return print_json(&output);
    }
    let signed = match (&output.signer, output.signature_verified) {
        (None, _) => "unsigned".to_owned(),
        (Some(s), true) => format!("signed by {}, verified", short(s)),
        (Some(s), false) => format!("claims signer {}, not checked: no trusted keys", short(s)),
    };
    let what = match output.files.len() {
        0 => "written to".to_owned(),
        n => format!("{n} files unpacked into"),
    };
    println!(
        "{}: version {} ({kind}, {}, sha256 {} verified, {signed}) {what} {}",
        output.model,
        output.version,
        size_text(output.size),
        short(&output.sha256),
        output.path.display()
    );
    Ok(())
}

/// Refuses an existing file, or a directory that is not empty.
fn check_free(out: &Path) -> anyhow::Result<()> {
    let Ok(meta) = fs::symlink_metadata(out) else {
        return Ok(());
    };
    let empty_dir = meta.is_dir()
        && fs::read_dir(out)
            .with_context(|| format!("reading {}", out.display()))?
            .next()
            .is_none();
    if !empty_dir {
        bail!(
            "refusing to overwrite {}: --out must name a new path or an empty directory",
            out.display()
        );
    }
    Ok(())
}

/// Writes a new file, removing it again if the write fails.
fn write_file(bytes: &[u8], out: &Path) -> anyhow::Result<()> {
    if out.is_dir() {
        bail!(
            "--out {} is a directory, but this version is a single file; name the file to write",
            out.display()
        );
    }
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(out)
        .with_context(|| format!("creating {}", out.display()))?;
    if let Err(e) = file.write_all(bytes).and_then(|()| file.sync_all()) {
        drop(file);
        let _ = fs::remove_file(out);
        return Err(e).with_context(|| format!("writing {}", out.display()));
    }
    Ok(())
}

/// Unpacks a text model's archive: into a staging directory beside `out`, renamed into place
/// once every file is written (over an empty directory, which a rename replaces).
fn unpack(bytes: &[u8], out: &Path) -> anyhow::Result<Vec<String>> {
    let Files::Archive(files) = Files::archive(bytes).context("reading the version's archive")?
    else {
        unreachable!("an archive indexes as an archive");
    };
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&parent).with_context(|| format!("creating {}", parent.display()))?;
    let base = out
        .file_name()
        .map_or("model".into(), |n| n.to_string_lossy());
    let staging = parent.join(format!(".{base}.fetch-{}", std::process::id()));
    let written = (|| {
        fs::create_dir(&staging).with_context(|| format!("creating {}", staging.display()))?;
        // Names are plain relative paths: `Files::archive` refuses `..`, roots and links.
        for (name, data) in &files {
            let path = staging.join(name);
            if let Some(dir) = path.parent() {
                fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            }
            write_file(data, &path)?;
        }
        fs::rename(&staging, out).with_context(|| {
            format!(
                "moving the unpacked files from {} to {}",
                staging.display(),
                out.display()
            )
        })
    })();
    if let Err(e) = written {
        let _ = fs::remove_dir_all(&staging);
        return Err(e);
    }
    Ok(files.into_keys().collect())
}
