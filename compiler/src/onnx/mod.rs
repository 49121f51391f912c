//! The ONNX frontend: reading `.onnx` files (memory-mapped, zero-copy tensor
//! data, external data mapped) and importing them into lpc's IR.

mod import;
pub mod proto;

pub use import::import;

use bytes::Bytes;
use prost::Message;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum OnnxError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a valid ONNX model: {msg}")]
    Decode { path: String, msg: String },
    #[error("{path}: {msg}")]
    Model { path: String, msg: String },
    #[error("{path}: node `{node}` ({op}): {msg}")]
    Node {
        path: String,
        node: String,
        op: String,
        msg: String,
    },
    #[error("{path}: tensor `{tensor}`: {msg}")]
    Tensor {
        path: String,
        tensor: String,
        msg: String,
    },
}

/// A decoded model with its file mapped: every `raw_data` is a slice of the map.
#[derive(Debug)]
pub struct OnnxModel {
    pub path: PathBuf,
    pub proto: proto::ModelProto,
}

fn map_file(path: &Path) -> Result<Bytes, OnnxError> {
    let io = |source| OnnxError::Io {
        path: path.display().to_string(),
        source,
    };
    let f = std::fs::File::open(path).map_err(io)?;
    // SAFETY: the map is read only; lpc never writes the model files, and a
    // file changed under the map by another process is outside its contract.
    let map = unsafe { memmap2::Mmap::map(&f) }.map_err(io)?;
    Ok(Bytes::from_owner(map))
}

impl OnnxModel {
    /// Maps and decodes a `.onnx` file.
    pub fn load(path: &Path) -> Result<Self, OnnxError> {
        let bytes = map_file(path)?;
        let proto = proto::ModelProto::decode(bytes).map_err(|e| OnnxError::Decode {
            path: path.display().to_string(),
            msg: e.to_string(),
        })?;
        if proto.graph.is_none() {
            return Err(OnnxError::Decode {
                path: path.display().to_string(),
                msg: "the model has no graph".into(),
            });
        }
        Ok(Self {
            path: path.to_path_buf(),
            proto,
        })
    }
}

/// Maps external-data files on first use and hands out slices of them.
#[derive(Debug, Default)]
pub(crate) struct ExternalData {
    dir: PathBuf,
    maps: HashMap<String, Bytes>,
}

impl ExternalData {
    pub(crate) fn new(model_path: &Path) -> Self {
        Self {
            dir: model_path
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_default(),
            maps: HashMap::new(),
        }
    }

    /// `length` bytes at `offset` of `location` (relative to the model's folder).
    pub(crate) fn slice(
        &mut self,
        location: &str,
        offset: usize,
        length: Option<usize>,
    ) -> Result<Bytes, String> {
        if Path::new(location).is_absolute() || location.split(['/', '\\']).any(|c| c == "..") {
            return Err(format!(
                "external data location `{location}` leaves the model's folder"
            ));
        }
        if !self.maps.contains_key(location) {
            let path = self.dir.join(location);
            let map = map_file(&path).map_err(|e| e.to_string())?;
            self.maps.insert(location.to_string(), map);
        }
        let map = &self.maps[location];
        let end = match length {
            Some(l) => offset.checked_add(l),
            None => Some(map.len()),
        };
        match end {
            Some(end) if end <= map.len() && offset <= end => Ok(map.slice(offset..end)),
            _ => Err(format!(
                "external data file `{location}` has {} bytes, but the tensor needs bytes {offset}..{}",
                map.len(),
                end.map_or("overflow".to_string(), |e| e.to_string())
            )),
        }
    }
}
