//! Builds the guest components for the integration tests, as wasmtime's
//! `test-programs-artifacts` does: a separate target folder so the nested cargo
//! cannot deadlock on the outer one's lock, no inherited RUSTFLAGS, and
//! `rerun-if-changed` taken from cargo's own dep-info files.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

const TARGET: &str = "wasm32-wasip2";
const PROFILE: &str = "guest";
/// (package, library file stem, constant name)
const GUESTS: &[(&str, &str, &str)] = &[
    ("aws-key-rotation", "aws_key_rotation", "GUEST_WASM"),
    ("hostile-guest", "hostile_guest", "HOSTILE_WASM"),
];

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest_dir.join("../..").canonicalize().unwrap();
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").unwrap());
    let target_dir = out_dir.join("guests");

    let mut cmd = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.arg("build")
        .arg("--manifest-path")
        .arg(root.join("Cargo.toml"))
        .arg("--target")
        .arg(TARGET)
        .arg("--profile")
        .arg(PROFILE)
        .env("CARGO_TARGET_DIR", &target_dir)
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET");
    for (package, _, _) in GUESTS {
        cmd.arg("-p").arg(package);
    }
    let status = cmd
        .status()
        .expect("run cargo to build the guest components");
    if !status.success() {
        panic!(
            "building the guest components for {TARGET} failed (see above). If the target is \
             missing, run `rustup target add {TARGET}`."
        );
    }

    let artifacts = target_dir.join(TARGET).join(PROFILE);
    let mut generated = String::new();
    for (_, stem, constant) in GUESTS {
        let wasm = artifacts.join(format!("{stem}.wasm"));
        assert!(wasm.is_file(), "{} was not built", wasm.display());
        generated.push_str(&format!(
            "/// Path of the `{stem}` component, built for {TARGET}.\npub const {constant}: &str = {:?};\n",
            wasm.display().to_string()
        ));
        rerun_if_changed_from_dep_info(&artifacts.join(format!("{stem}.d")));
    }
    fs::write(out_dir.join("guests.rs"), generated).unwrap();
    println!("cargo:rerun-if-changed={}", root.join("wit").display());
}

/// `foo.wasm: a.rs b.rs ...`: every input of the last build.
fn rerun_if_changed_from_dep_info(dep_info: &Path) {
    let Ok(text) = fs::read_to_string(dep_info) else {
        return;
    };
    let Some((_, deps)) = text.split_once(": ") else {
        return;
    };
    // Paths escape spaces as "\ ".
    let deps = deps.replace("\\ ", "\u{0}");
    for dep in deps.split_whitespace() {
        println!("cargo:rerun-if-changed={}", dep.replace('\u{0}', " "));
    }
}
