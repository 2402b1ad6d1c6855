//! libFuzzer entry of the `rfb` target (see `mdev_fuzz::targets::rfb`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mdev_fuzz::targets::rfb::run(data));
