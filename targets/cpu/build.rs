//! Builds `lpc-rt` as a static archive (a nested, release-mode cargo build in
//! its own target directory) for `lib.rs` to embed: every library lpc emits
//! links it, so the `lpc` binary carries it instead of looking for it at run
//! time.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let root = manifest.join("../..");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("set by cargo"));
    for p in [
        "runtime/src",
        "runtime/Cargo.toml",
        "runtime/rt/src",
        "runtime/rt/Cargo.toml",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(p).display());
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let target_dir = out.join("rt-target");
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&root)
        .args(["build", "--release", "--locked", "-p", "lpc-rt", "--lib"])
        .arg("--target-dir")
        .arg(&target_dir)
        // The archive must not carry the outer build's wrappers (clippy) or
        // flags; it is a plain release build, without debug info.
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_BUILD_RUSTFLAGS")
        .env_remove("CARGO_MAKEFLAGS")
        .env_remove("MAKEFLAGS")
        .env_remove("MFLAGS")
        .env("CARGO_PROFILE_RELEASE_DEBUG", "false")
        .env("CARGO_PROFILE_RELEASE_STRIP", "debuginfo");
    let status = cmd.status().expect("running cargo for lpc-rt");
    assert!(
        status.success(),
        "building the lpc-rt static archive failed"
    );
    let lib = target_dir.join("release/liblpc_rt.a");
    std::fs::copy(&lib, out.join("liblpc_rt.a")).expect("copying liblpc_rt.a");
}
