#![no_main]
//! Fuzzes `doorman::fuzzing::access_table`; see that function for the invariants.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| doorman::fuzzing::access_table(data));
