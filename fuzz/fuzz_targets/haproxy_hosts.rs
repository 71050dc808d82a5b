#![no_main]
//! Fuzzes `doorman::fuzzing::haproxy_hosts`; see that function for the invariants.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| doorman::fuzzing::haproxy_hosts(data));
