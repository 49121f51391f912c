//! Helpers for the suites in `tests/tests/`: locating fixtures and reading the
//! golden-vector CSV files.

use std::path::PathBuf;

/// `tests/fixtures/<rel>` in this repository.
pub fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(rel)
}

/// A golden-vector CSV: header names and rows of fields.
#[derive(Debug)]
pub struct Csv {
    pub header: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

impl Csv {
    /// Reads `tests/fixtures/formats/<name>`; panics with the path on error,
    /// since a missing fixture is a broken checkout.
    pub fn load(name: &str) -> Self {
        let path = fixture(&format!("formats/{name}"));
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        let mut lines = text.lines();
        let header = lines
            .next()
            .unwrap_or_else(|| panic!("{} is empty", path.display()))
            .split(',')
            .map(str::to_string)
            .collect::<Vec<_>>();
        let rows = lines
            .map(|l| l.split(',').map(str::to_string).collect::<Vec<_>>())
            .collect::<Vec<_>>();
        for (i, r) in rows.iter().enumerate() {
            assert_eq!(r.len(), header.len(), "{} row {}", path.display(), i + 2);
        }
        Csv { header, rows }
    }

    /// Index of a column by name.
    pub fn col(&self, name: &str) -> usize {
        self.header
            .iter()
            .position(|h| h == name)
            .unwrap_or_else(|| panic!("no column {name} in {:?}", self.header))
    }
}

/// Parses upper-case hex: one u32 per 8 digits.
pub fn hex_u32s(s: &str) -> Vec<u32> {
    (0..s.len() / 8)
        .map(|i| u32::from_str_radix(&s[8 * i..8 * i + 8], 16).expect("hex f32"))
        .collect()
}

/// Parses upper-case hex: one byte per 2 digits.
pub fn hex_bytes(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).expect("hex byte"))
        .collect()
}

/// f32 bits with NaNs canonicalised to `7FC00000`, as the vectors write them.
pub fn canon_bits(x: f32) -> u32 {
    if x.is_nan() {
        0x7FC0_0000
    } else {
        x.to_bits()
    }
}
