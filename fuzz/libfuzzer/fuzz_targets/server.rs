//! libFuzzer entry of the `server` target (see `mdev_fuzz::targets::server`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mdev_fuzz::targets::server::run(data));
