//! libFuzzer entry of the `pci_config` target (see `mdev_fuzz::targets::pci_config`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mdev_fuzz::targets::pci_config::run(data));
