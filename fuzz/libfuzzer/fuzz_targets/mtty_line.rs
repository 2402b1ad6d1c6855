//! libFuzzer entry of the `mtty_line` target (see `mdev_fuzz::targets::mtty_line`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mdev_fuzz::targets::mtty_line::run(data));
