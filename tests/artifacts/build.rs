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
    let many = out_dir.join("many_memories.wasm");
    let hostile = fs::read(artifacts.join("hostile_guest.wasm")).unwrap();
    fs::write(&many, with_extra_memories(&hostile, 8, 160)).unwrap();
    generated.push_str(&format!(
        "/// The hostile component plus 8 core instances of 10 MiB memory each: every\n/// memory is under a 64 MiB cap, their total is not.\npub const MANY_MEMORIES_WASM: &str = {:?};\n",
        many.display().to_string()
    ));
    fs::write(out_dir.join("guests.rs"), generated).unwrap();
    println!("cargo:rerun-if-changed={}", root.join("wit").display());
}

/// `component` with `count` more core instances, each of a module that only
/// declares a memory of `pages` 64 KiB pages. They are appended as new sections,
/// so no existing index moves, and instantiating the component creates them.
fn with_extra_memories(component: &[u8], count: u32, pages: u64) -> Vec<u8> {
    use wasm_encoder::{
        ComponentSection, Encode, InstanceSection, MemorySection, MemoryType, Module, ModuleArg,
        ModuleSection,
    };
    use wasmparser::{Parser, Payload};

    // Core modules defined at the top level (not inside a nested module or component).
    let mut depth = 0usize;
    let mut modules = 0u32;
    for payload in Parser::new(0).parse_all(component) {
        match payload.expect("the hostile component parses") {
            Payload::ModuleSection { .. } => {
                if depth == 0 {
                    modules += 1;
                }
                depth += 1;
            }
            Payload::ComponentSection { .. } => depth += 1,
            Payload::End(_) => depth = depth.saturating_sub(1),
            _ => {}
        }
    }

    let mut memory = MemorySection::new();
    memory.memory(MemoryType {
        minimum: pages,
        maximum: None,
        memory64: false,
        shared: false,
        page_size_log2: None,
    });
    let mut module = Module::new();
    module.section(&memory);

    let mut out = component.to_vec();
    let mut instances = InstanceSection::new();
    for i in 0..count {
        let section = ModuleSection(&module);
        out.push(section.id());
        section.encode(&mut out);
        instances.instantiate(modules + i, Vec::<(&str, ModuleArg)>::new());
    }
    out.push(instances.id());
    instances.encode(&mut out);
    wasmparser::Validator::new_with_features(wasmparser::WasmFeatures::all())
        .validate_all(&out)
        .expect("the component with extra memories is valid");
    out
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
