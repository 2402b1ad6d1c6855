//! mdpy (being written).
