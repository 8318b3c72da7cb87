//! `cargo fuzz run body`: see `scopegate::fuzzing::body` for the input format and the
//! invariants checked. The corpus lives in `fuzz/corpus/body/` and is replayed by
//! `tests/fuzz_corpus.rs` in plain `cargo test`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| scopegate::fuzzing::body(data));
