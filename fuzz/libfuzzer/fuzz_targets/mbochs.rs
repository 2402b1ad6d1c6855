//! libFuzzer entry of the `mbochs` target (see `mdev_fuzz::targets::mbochs`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mdev_fuzz::targets::mbochs::run(data));
