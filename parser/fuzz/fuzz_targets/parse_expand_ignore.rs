//! Fuzzes the whole parser surface: parse, type every instruction, expand every word of every
//! instruction (and the text as a word list), lint, and use each line as a .dockerignore
//! pattern. None of it may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    parser::fuzz_one(text);
});
