//! Helpers shared by the integration tests that drive the `lpc` binary.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The fixture models (`tests/fixtures/models`).
pub fn models() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/models")
}

/// Runs the `lpc` binary of this build.
pub fn lpc(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lpc"))
        .args(args)
        .output()
        .expect("running lpc")
}

pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}
