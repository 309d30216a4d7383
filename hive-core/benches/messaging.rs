//! Messaging benchmark (filled in below).
fn main() {}
