//! A cache of precompiled components. A precompiled component is native code, so
//! it is loaded only from the host's own cache folder, which must be private.

use std::fs;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

/// The default cache folder: `$XDG_CACHE_HOME/rotate-host` or `~/.cache/rotate-host`.
pub fn default_dir() -> Option<PathBuf> {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .map(|base| base.join("rotate-host"))
}

/// Compiles `bytes`, or loads the result of an earlier compilation from `dir`.
pub fn load(engine: &Engine, bytes: &[u8], dir: Option<&Path>) -> wasmtime::Result<Component> {
    let Some(dir) = dir.and_then(usable_dir) else {
        return Component::new(engine, bytes);
    };
    let mut engine_hash = DefaultHasher::new();
    engine
        .precompile_compatibility_hash()
        .hash(&mut engine_hash);
    let digest = Sha256::digest(bytes);
    let name = format!(
        "{}-{:016x}.cwasm",
        digest
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>(),
        engine_hash.finish()
    );
    let path = dir.join(name);
    if path.is_file() {
        // SAFETY: the file is in our private cache folder (checked by `usable_dir`)
        // and named by the SHA-256 of the source and the engine's settings.
        match unsafe { Component::deserialize_file(engine, &path) } {
            Ok(c) => {
                tracing::debug!(path = %path.display(), "loaded precompiled plugin");
                return Ok(c);
            }
            Err(e) => tracing::warn!(path = %path.display(), "ignoring a bad cache entry: {e}"),
        }
    }
    let component = Component::new(engine, bytes)?;
    if let Err(e) = store(&path, &component.serialize()?) {
        tracing::warn!(path = %path.display(), "could not cache the compiled plugin: {e}");
    }
    Ok(component)
}

/// The folder if it is ours and private, creating it if needed.
fn usable_dir(dir: &Path) -> Option<&Path> {
    if !dir.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .ok()?;
    }
    let meta = fs::metadata(dir).ok()?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    let private = meta.is_dir() && meta.uid() == me && meta.permissions().mode() & 0o022 == 0;
    if !private {
        tracing::warn!(dir = %dir.display(), "not using the cache folder: it must be a folder owned by this user and not writable by others");
        return None;
    }
    Some(dir)
}

fn store(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().expect("cache files live in a folder");
    let mut tmp = tempfile::Builder::new()
        .permissions(fs::Permissions::from_mode(0o600))
        .tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}
