//! Clients for the two protocols (filled in below).
