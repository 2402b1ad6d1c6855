//! pci-passthrough (being written).
