//! `keygen`: a signing key pair, written to files nobody else can read.

use anyhow::{bail, Context};
use flotilla_registry::signing;
use serde::Serialize;

use super::*;

// ---- keygen --------------------------------------------------------------------------

/// `keygen --json`.
#[derive(Debug, Serialize)]
struct KeygenOutput {
    secret_key_file: PathBuf,
    public_key_file: PathBuf,
    public_key: String,
}

pub(super) fn keygen(args: KeygenArgs) -> anyhow::Result<()> {
    let name = &args.name;
    if name.is_empty() || name.starts_with('.') || name.contains(['/', '\\']) {
        bail!("--name {name:?} must be a plain file name: no slashes, not starting with '.'");
    }
    let secret_path = args.out.join(format!("{}.key", args.name));
    let public_path = args.out.join(format!("{}.pub", args.name));
    // Checked up front so that a refusal leaves no half-written pair behind.
    for path in [&secret_path, &public_path] {
        if path.exists() {
            bail!(
                "refusing to overwrite the existing key file {}; move it away or pick another --name",
                path.display()
            );
        }
    }
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating the directory {}", args.out.display()))?;
    let key = signing::generate();
    let public = signing::public_hex(&key.verifying_key());
    write_new(&secret_path, &signing::secret_hex(&key), true)?;
    write_new(&public_path, &public, false)?;
    if args.json {
        return print_json(&KeygenOutput {
            secret_key_file: secret_path,
            public_key_file: public_path,
            public_key: public,
        });
    }
    let (secret, public_file) = (secret_path.display(), public_path.display());
    println!("Secret key: {secret} (keep it private: whoever holds it can publish trusted models)");
    println!("Public key: {public_file}");
    println!("  {public}");
    println!();
    println!("Sign when publishing:");
    println!("  flotilla models publish NAME FILE --signing-key {secret}");
    println!("Trust it on workers, in the config file:");
    println!("  [registry]");
    println!("  trusted_keys = [\"{public}\"]");
    println!("or in the environment (values are TOML):");
    println!("  FLOTILLA_REGISTRY_TRUSTED_KEYS='[\"{public}\"]'");
    Ok(())
}

/// Writes `text` to a file that must not exist yet; `secret` files are readable by their
/// owner only.
fn write_new(path: &Path, text: &str, secret: bool) -> anyhow::Result<()> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if secret { 0o600 } else { 0o644 });
    }
    #[cfg(not(unix))]
    let _ = secret;
    let mut file = options.open(path).with_context(|| {
        if path.exists() {
            format!(
                "refusing to overwrite the existing key file {}",
                path.display()
            )
        } else {
            format!("creating {}", path.display())
        }
    })?;
    writeln!(file, "{text}").with_context(|| format!("writing {}", path.display()))
}
