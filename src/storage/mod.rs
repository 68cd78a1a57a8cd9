//! The original `storage/<sim>/` tree and the temp_storage handshake.

pub mod atomic;
pub mod compress;
pub mod pyjson;

pub use atomic::{append_bytes, append_jsonl, jsonl_bytes, open_append, read_jsonl, write_atomic, write_json_py};
pub mod sim;

pub use sim::{EnvTile, Environment, Meta, SimDir};
