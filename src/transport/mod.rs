//! Peer transport (being written).
