//! Ferry's shared domain and protocol types: plain data with serde and validation, no I/O.

pub mod deploy;
pub mod image;
pub mod job;
pub mod machine;
pub mod protocol;
pub mod survey;
