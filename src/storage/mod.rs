//! The original `storage/<sim>/` tree and the temp_storage handshake.

pub mod atomic;
pub mod compress;
pub mod experiment;
pub mod pyjson;

pub use atomic::{
    append_bytes, append_jsonl, count_lines, jsonl_bytes, open_append, read_jsonl, sweep_temp_files, sync_all_at_once,
    sync_dir, sync_file, truncate_lines, write_atomic, write_json_py,
};
pub mod sim;
pub mod sweep;

pub use sim::{EnvTile, Environment, Meta, SimDir};
