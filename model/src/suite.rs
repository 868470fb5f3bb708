//! The configurations checked: a quick one for `cargo test`, the full set for `--full`, and one
//! per reverted fix to show the checker bites.
