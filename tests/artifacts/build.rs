//! Builds the guest components for the integration tests, as wasmtime's
//! `test-programs-artifacts` does: a separate target folder so the nested cargo
//! cannot deadlock on the outer one's lock, no inherited RUSTFLAGS, and
//! `rerun-if-changed` taken from cargo's own dep-info files.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use wasm_encoder::{
    BlockType, CodeSection, ComponentSection, Encode, Function, FunctionSection, InstanceSection,
    MemorySection, MemoryType, Module, ModuleArg, ModuleSection, RefType, StartSection,
    TableSection, TableType, TypeSection,
};
use wasmparser::{Parser, Payload};

const TARGET: &str = "wasm32-wasip2";
const PROFILE: &str = "guest";

/// A component the tests run: a package built with some features.
struct Guest {
    package: &'static str,
    /// The library's file stem.
    stem: &'static str,
    features: &'static str,
    constant: &'static str,
    doc: &'static str,
}

const GUESTS: &[Guest] = &[
    Guest {
        package: "aws-key-rotation",
        stem: "aws_key_rotation",
        features: "",
        constant: "GUEST_WASM",
        doc: "The AWS plugin.",
    },
    Guest {
        package: "postgres-password-rotation",
        stem: "postgres_password_rotation",
        features: "",
        constant: "POSTGRES_WASM",
        doc: "The PostgreSQL plugin.",
    },
    Guest {
        package: "hostile-guest",
        stem: "hostile_guest",
        features: "",
        constant: "HOSTILE_WASM",
        doc: "The hostile plugin; its config's `behaviour` picks how it misbehaves.",
    },
    Guest {
        package: "hostile-guest",
        stem: "hostile_guest",
        features: "spin-in-info",
        constant: "SPIN_IN_INFO_WASM",
        doc: "The hostile plugin, looping forever in `info`.",
    },
    Guest {
        package: "hostile-guest",
        stem: "hostile_guest",
        features: "spin-in-config-schema",
        constant: "SPIN_IN_CONFIG_SCHEMA_WASM",
        doc: "The hostile plugin, looping forever in `config-schema`.",
    },
];

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest_dir.join("../..").canonicalize().unwrap();
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").unwrap());
    let target_dir = out_dir.join("guests");
    let artifacts = target_dir.join(TARGET).join(PROFILE);

    let mut generated = String::new();
    for guest in GUESTS {
        build(&root, &target_dir, guest);
        // Each build of a package replaces its file: keep a copy per variant.
        let built = artifacts.join(format!("{}.wasm", guest.stem));
        assert!(built.is_file(), "{} was not built", built.display());
        let wasm = out_dir.join(format!("{}.wasm", guest.constant.to_lowercase()));
        fs::copy(&built, &wasm).unwrap();
        generate(&mut generated, guest.doc, guest.constant, &wasm);
        rerun_if_changed_from_dep_info(&artifacts.join(format!("{}.d", guest.stem)));
    }

    let hostile = fs::read(out_dir.join("hostile_wasm.wasm")).unwrap();
    let made: [(&str, &str, Vec<u8>); 4] = [
        (
            "MANY_MEMORIES_WASM",
            "The hostile component plus 8 core instances of 10 MiB memory each: every\n/// memory is under a 64 MiB cap, their total is not.",
            with_extra_instances(&hostile, &memory_module(160), 8),
        ),
        (
            "BIG_TABLE_WASM",
            "The hostile component plus a core instance whose table of 5,000,000\n/// elements costs 80 MiB of the memory budget.",
            with_extra_instances(&hostile, &table_module(5_000_000), 1),
        ),
        (
            "MANY_INSTANCES_WASM",
            "The hostile component plus 70 empty core instances: past the cap of 64.",
            with_extra_instances(&hostile, &Module::new(), 70),
        ),
        (
            "SPIN_AT_START_WASM",
            "The hostile component plus a core instance whose start function loops\n/// forever: instantiating it never ends.",
            with_extra_instances(&hostile, &spinning_start_module(), 1),
        ),
    ];
    for (constant, doc, bytes) in made {
        let wasm = out_dir.join(format!("{}.wasm", constant.to_lowercase()));
        fs::write(&wasm, bytes).unwrap();
        generate(&mut generated, doc, constant, &wasm);
    }
    fs::write(out_dir.join("guests.rs"), generated).unwrap();
    println!("cargo:rerun-if-changed={}", root.join("wit").display());
}

/// `cargo build` of one guest, in its own cargo so nothing is inherited.
fn build(root: &Path, target_dir: &Path, guest: &Guest) {
    let mut cmd = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.arg("build")
        .arg("--manifest-path")
        .arg(root.join("Cargo.toml"))
        .arg("--target")
        .arg(TARGET)
        .arg("--profile")
        .arg(PROFILE)
        .arg("-p")
        .arg(guest.package)
        .env("CARGO_TARGET_DIR", target_dir)
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET");
    if !guest.features.is_empty() {
        cmd.arg("--features").arg(guest.features);
    }
    let status = cmd
        .status()
        .expect("run cargo to build the guest components");
    if !status.success() {
        panic!(
            "building {} for {TARGET} failed (see above). If the target is missing, run \
             `rustup target add {TARGET}`.",
            guest.package
        );
    }
}

fn generate(out: &mut String, doc: &str, constant: &str, wasm: &Path) {
    out.push_str(&format!(
        "/// {doc}\npub const {constant}: &str = {:?};\n",
        wasm.display().to_string()
    ));
}

/// A core module that only declares a memory of `pages` 64 KiB pages.
fn memory_module(pages: u64) -> Module {
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
    module
}

/// A core module that only declares a table of `elements` function references.
fn table_module(elements: u64) -> Module {
    let mut tables = TableSection::new();
    tables.table(TableType {
        element_type: RefType::FUNCREF,
        table64: false,
        minimum: elements,
        maximum: None,
        shared: false,
    });
    let mut module = Module::new();
    module.section(&tables);
    module
}

/// A core module whose start function is `loop br 0 end`.
fn spinning_start_module() -> Module {
    let mut types = TypeSection::new();
    types.ty().function([], []);
    let mut functions = FunctionSection::new();
    functions.function(0);
    let mut code = CodeSection::new();
    let mut body = Function::new([]);
    body.instructions()
        .loop_(BlockType::Empty)
        .br(0)
        .end()
        .end();
    code.function(&body);
    let mut module = Module::new();
    module
        .section(&types)
        .section(&functions)
        .section(&StartSection { function_index: 0 })
        .section(&code);
    module
}

/// `component` with `count` more core instances of `module`. They are
/// appended as new sections, so no existing index moves, and instantiating
/// the component creates them.
fn with_extra_instances(component: &[u8], module: &Module, count: u32) -> Vec<u8> {
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

    let mut out = component.to_vec();
    let mut instances = InstanceSection::new();
    for i in 0..count {
        let section = ModuleSection(module);
        out.push(section.id());
        section.encode(&mut out);
        instances.instantiate(modules + i, Vec::<(&str, ModuleArg)>::new());
    }
    out.push(instances.id());
    instances.encode(&mut out);
    wasmparser::Validator::new_with_features(wasmparser::WasmFeatures::all())
        .validate_all(&out)
        .expect("the component with extra instances is valid");
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
