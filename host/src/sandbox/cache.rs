//! A cache of precompiled components. A precompiled component is native code
//! that wasmtime loads without checking it, so an entry is used only if it is
//! provably ours: a regular file (not a link) owned by this user with mode 0600,
//! in a folder only this user can write, under parents no one else can
//! replace, and carrying a MAC of its name and code under a per-user key kept
//! beside it at 0600.
//! Anything else is ignored with a warning, and the plugin is compiled again.

use std::fs::{self, File, OpenOptions};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

type Tag = Hmac<Sha256>;
const TAG_LEN: usize = 32;
const KEY_LEN: usize = 32;
const KEY_FILE: &str = "key";

/// The default cache folder: `$XDG_CACHE_HOME/rotate-host` or `~/.cache/rotate-host`.
pub fn default_dir() -> Option<PathBuf> {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .map(|base| base.join("rotate-host"))
}

/// The SHA-256 of `bytes` in lowercase hex: a plugin's digest, as pins name it.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Compiles `bytes`, or loads the result of an earlier compilation from `dir`.
pub fn load(engine: &Engine, bytes: &[u8], dir: Option<&Path>) -> wasmtime::Result<Component> {
    let Some((dir, key)) = dir
        .and_then(usable_dir)
        .and_then(|d| Some((d, mac_key(d)?)))
    else {
        return Component::new(engine, bytes);
    };
    let mut engine_hash = DefaultHasher::new();
    engine
        .precompile_compatibility_hash()
        .hash(&mut engine_hash);
    let name = format!("{}-{:016x}.cwasm", sha256_hex(bytes), engine_hash.finish());
    let path = dir.join(name);
    match read_entry(&path, &key) {
        Ok(None) => {}
        Ok(Some(native)) => {
            // SAFETY: `native` is the exact bytes whose MAC under this user's
            // private key was checked just now, read from a 0600 regular file
            // owned by this user in a folder only this user can write. Only this
            // program writes such entries, from `Component::serialize` of the
            // same engine configuration (the name carries its hash). The bytes
            // are not read again between the check and the load.
            match unsafe { Component::deserialize(engine, &native) } {
                Ok(c) => {
                    tracing::debug!(path = %path.display(), "loaded precompiled plugin");
                    return Ok(c);
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), "ignoring a bad cache entry: {e:#}")
                }
            }
        }
        Err(why) => tracing::warn!(
            path = %path.display(),
            "ignoring a cache entry: {why}; compiling the plugin again"
        ),
    }
    let component = Component::new(engine, bytes)?;
    if let Err(e) = store(&path, &key, &component.serialize()?) {
        tracing::warn!(path = %path.display(), "could not cache the compiled plugin: {e}");
    }
    Ok(component)
}

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// The folder if it is ours and private and its parents are safe, creating it if needed.
fn usable_dir(dir: &Path) -> Option<&Path> {
    if !dir.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .ok()?;
    }
    let refuse = |why: String| {
        tracing::warn!(dir = %dir.display(), "not using the cache folder: {why}");
        None
    };
    let meta = fs::symlink_metadata(dir).ok()?;
    if !meta.is_dir() || meta.uid() != euid() || meta.permissions().mode() & 0o022 != 0 {
        return refuse(
            "it must be a folder (not a link) owned by this user and not writable by others; \
             `chmod 700` it, or pass --cache-dir"
                .into(),
        );
    }
    // A parent that someone else can write could have this folder swapped.
    let real = fs::canonicalize(dir).ok()?;
    for parent in real.ancestors().skip(1) {
        let Ok(m) = fs::metadata(parent) else {
            return refuse(format!("cannot inspect its parent {}", parent.display()));
        };
        let owner_ok = m.uid() == 0 || m.uid() == euid();
        if !owner_ok || crate::fsguard::others_may_swap(&m) {
            return refuse(format!(
                "its parent {} can be changed by other users; pass a --cache-dir under a \
                 folder only you and root can write",
                parent.display()
            ));
        }
    }
    Some(dir)
}

/// Opens an existing file only if it is a regular file (not a link), owned by
/// this user, with no access for group or others.
fn open_private(path: &Path) -> Result<Option<File>, String> {
    let file = match OpenOptions::new()
        .read(true)
        .custom_flags(crate::fsguard::SAFE_OPEN)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err("it is a symbolic link".into());
        }
        Err(e) => return Err(format!("it cannot be opened ({e})")),
    };
    let meta = file.metadata().map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("it is not a regular file".into());
    }
    if meta.uid() != euid() {
        return Err(format!("it is owned by uid {}, not this user", meta.uid()));
    }
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(format!(
            "its mode is {:04o}, not 0600",
            meta.permissions().mode() & 0o7777
        ));
    }
    Ok(Some(file))
}

/// This user's MAC key, created on first use.
fn mac_key(dir: &Path) -> Option<[u8; KEY_LEN]> {
    let path = dir.join(KEY_FILE);
    let read = |mut f: File| {
        let mut key = [0u8; KEY_LEN];
        let mut rest = Vec::new();
        f.read_exact(&mut key).ok()?;
        f.read_to_end(&mut rest).ok()?;
        rest.is_empty().then_some(key)
    };
    match open_private(&path) {
        Ok(Some(f)) => {
            let key = read(f);
            if key.is_none() {
                tracing::warn!(path = %path.display(), "not using the cache: its key file is damaged; delete it");
            }
            return key;
        }
        Ok(None) => {}
        Err(why) => {
            tracing::warn!(path = %path.display(), "not using the cache: its key file is unsafe ({why}); delete it");
            return None;
        }
    }
    let mut key = [0u8; KEY_LEN];
    getrandom::fill(&mut key).ok()?;
    let mut tmp = tempfile::Builder::new()
        .permissions(fs::Permissions::from_mode(0o600))
        .tempfile_in(dir)
        .ok()?;
    tmp.write_all(&key).ok()?;
    tmp.as_file().sync_all().ok()?;
    match tmp.persist_noclobber(&path) {
        Ok(_) => Some(key),
        // Another run created it first: use theirs.
        Err(_) => open_private(&path).ok().flatten().and_then(read),
    }
}

/// The MAC of an entry covers its name (the plugin's SHA-256 and the engine's
/// hash) as well as its code: a valid entry renamed to another plugin's name
/// does not verify.
fn tag(key: &[u8], path: &Path, native: &[u8]) -> Tag {
    let mut mac = Tag::new_from_slice(key).expect("HMAC takes any key length");
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    mac.update(name.as_bytes());
    mac.update(&[0]);
    mac.update(native);
    mac
}

/// The entry's native code, if the file is private and its MAC is right.
fn read_entry(path: &Path, key: &[u8]) -> Result<Option<Vec<u8>>, String> {
    let Some(mut file) = open_private(path)? else {
        return Ok(None);
    };
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).map_err(|e| e.to_string())?;
    if bytes.len() < TAG_LEN {
        return Err("it is too short to hold a MAC".into());
    }
    let native = bytes.split_off(TAG_LEN);
    tag(key, path, &native).verify_slice(&bytes).map_err(|_| {
        "its MAC does not match: it was not written by this user's rotate-host".to_string()
    })?;
    Ok(Some(native))
}

fn store(path: &Path, key: &[u8], native: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().expect("cache files live in a folder");
    let mut tmp = tempfile::Builder::new()
        .permissions(fs::Permissions::from_mode(0o600))
        .tempfile_in(dir)?;
    tmp.write_all(&tag(key, path, native).finalize().into_bytes())?;
    tmp.write_all(native)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}
