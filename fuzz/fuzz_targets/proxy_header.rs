#![no_main]
//! Fuzzes `doorman::fuzzing::proxy_header`; see that function for the invariants.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| doorman::fuzzing::proxy_header(data));
