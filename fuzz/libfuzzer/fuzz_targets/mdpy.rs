//! libFuzzer entry of the `mdpy` target (see `mdev_fuzz::targets::mdpy`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mdev_fuzz::targets::mdpy::run(data));
