//! The node configuration (work in progress).
