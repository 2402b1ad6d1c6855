//! mbochs (being written).
