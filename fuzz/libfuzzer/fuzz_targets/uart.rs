//! libFuzzer entry of the `uart` target (see `mdev_fuzz::targets::uart`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mdev_fuzz::targets::uart::run(data));
