//! `cargo fuzz run scope_file`: see `scopegate::fuzzing::scope_file` for the input format and the
//! invariants checked. The corpus lives in `fuzz/corpus/scope_file/` and is replayed by
//! `tests/fuzz_corpus.rs` in plain `cargo test`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| scopegate::fuzzing::scope_file(data));
