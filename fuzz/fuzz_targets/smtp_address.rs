#![no_main]
//! Fuzzes `doorman::fuzzing::smtp_address`; see that function for the invariants.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| doorman::fuzzing::smtp_address(data));
