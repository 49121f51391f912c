//! Atomic output files: written to a temporary file beside the destination
//! and renamed over it only once complete, so an output appears whole or not
//! at all.

use std::io::Write;
use std::path::Path;

/// A staged output: call [`Staged::commit`] once every output is ready.
#[derive(Debug)]
pub struct Staged(tempfile::NamedTempFile);

/// Creates the temporary file beside `path` (usual 0644 permissions) and
/// lets `fill` write it.
pub fn stage(
    path: &Path,
    fill: impl FnOnce(&mut std::fs::File) -> std::io::Result<()>,
) -> std::io::Result<Staged> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut builder = tempfile::Builder::new();
    builder.prefix(".lpc-").suffix(".tmp");
    // tempfile creates 0600 files; outputs get the usual 0644.
    #[cfg(unix)]
    builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644));
    let mut tmp = builder.tempfile_in(dir)?;
    fill(tmp.as_file_mut())?;
    tmp.as_file_mut().flush()?;
    Ok(Staged(tmp))
}

impl Staged {
    pub fn commit(self, path: &Path) -> std::io::Result<()> {
        self.0.persist(path).map(|_| ()).map_err(|e| e.error)
    }
}

/// Stages and commits at once.
pub fn write(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    stage(path, |f| f.write_all(bytes))?.commit(path)
}
