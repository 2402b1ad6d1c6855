//! libFuzzer entry of the `wire` target (see `mdev_fuzz::targets::wire`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mdev_fuzz::targets::wire::run(data));
