//! lpc's passes over the IR.
//!
//! Empty until the ONNX frontend and IR land (issue 3): each pass will live in
//! its own file with a doc comment stating what it matches, what it
//! guarantees and what must run before it, one registry entry and one
//! snapshot test. Architecture invariant: passes never do I/O.
