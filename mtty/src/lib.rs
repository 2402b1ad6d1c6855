//! mtty (being written).
